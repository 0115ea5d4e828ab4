using CombaDistill.Modeling;
using CombaDistill.Modeling.Llama;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Modeling;

public class RotaryEmbeddingTests
{
    [Fact]
    public void Llama3_scaling_keeps_high_frequencies_slows_low_ones_and_blends_between()
    {
        var scaling = new RopeScaling("llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 8192);
        var plain = new RotaryEmbedding(128, 500000).InverseFrequencies;
        var scaled = new RotaryEmbedding(128, 500000, scaling).InverseFrequencies;
        var bands = new int[3];
        for (var i = 0; i < plain.Count; i++)
        {
            var wavelength = 2 * Math.PI / plain[i];
            if (wavelength < 8192 / 4.0) { Assert.Equal(plain[i], scaled[i]); bands[0]++; }
            else if (wavelength > 8192 / 1.0) { Assert.Equal(plain[i] / 8, scaled[i], 1e-15); bands[2]++; }
            else
            {
                Assert.InRange(scaled[i], plain[i] / 8, plain[i]);
                bands[1]++;
            }
        }
        Assert.All(bands, n => Assert.True(n > 0));
        // monotone: scaling never reorders frequencies
        for (var i = 1; i < scaled.Count; i++) Assert.True(scaled[i] < scaled[i - 1]);
        // matches the independent formula in the reference forward
        var config = new LlamaConfig { HeadDim = 128, RopeTheta = 500000, RopeScaling = scaling };
        var expected = LlamaReference.InverseFrequencies(config);
        for (var i = 0; i < expected.Length; i++) Assert.Equal(expected[i], scaled[i], expected[i] * 1e-12);
    }

    [Fact]
    public void Linear_scaling_is_positions_divided_by_the_factor()
    {
        using var scope = NewDisposeScope();
        var scaled = new RotaryEmbedding(16, 10000, new RopeScaling("linear", 4)).CosSin(8, 20, ScalarType.Float64, CPU);
        for (var p = 8; p < 28; p++)
        {
            var plain = new RotaryEmbedding(16, 10000).InverseFrequencies;
            for (var i = 0; i < 8; i++)
            {
                var angle = p / 4.0 * plain[i];
                Assert.Equal(Math.Cos(angle), scaled.cos[p - 8, i].item<double>(), 1e-5);
                Assert.Equal(Math.Sin(angle), scaled.sin[p - 8, i + 8].item<double>(), 1e-5);
            }
        }
    }

    [Fact]
    public void Rotation_preserves_norms_and_relative_position_only_matters()
    {
        using var scope = NewDisposeScope();
        var rope = new RotaryEmbedding(8, 10000);
        var g = new TorchSharp.torch.Generator(1);
        var q = randn([1, 1, 1, 8], ScalarType.Float64, generator: g);
        var k = randn([1, 1, 1, 8], ScalarType.Float64, generator: g);
        double Score(long pq, long pk)
        {
            var (cq, sq) = rope.CosSin(pq, 1, ScalarType.Float64, CPU);
            var (ck, sk) = rope.CosSin(pk, 1, ScalarType.Float64, CPU);
            return (RotaryEmbedding.Apply(q, cq, sq) * RotaryEmbedding.Apply(k, ck, sk)).sum().item<double>();
        }
        Assert.Equal(Score(5, 2), Score(105, 102), 1e-4);
        var (c7, s7) = rope.CosSin(7, 1, ScalarType.Float64, CPU);
        Assert.Equal(q.norm().item<double>(), RotaryEmbedding.Apply(q, c7, s7).norm().item<double>(), 1e-6);
        Assert.NotEqual(Score(5, 2), Score(5, 3), 1e-3);
    }
}
