using CombaDistill.Evaluation;
using CombaDistill.Modeling.Llama;
using CombaDistill.Tests.Modeling;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Evaluation;

public class GenerationSpeedTests(ImportedStories260K stories) : IClassFixture<ImportedStories260K>
{
    [Fact]
    public void The_teachers_KV_cache_grows_linearly_with_length()
    {
        var points = GenerationSpeed.Measure(stories.Model, new SpeedOptions([512, 256], Warmup: 2), cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal([256, 512], points.Select(p => p.Length));
        // keys and values, per layer and KV head, head_dim float32 each, for every token held
        var c = stories.Model.Config;
        long perToken = c.NumHiddenLayers * 2L * c.NumKeyValueHeads * c.HeadDim * sizeof(float);
        Assert.Equal(256 * perToken, points[0].StateBytes);
        Assert.Equal(512 * perToken, points[1].StateBytes);
        Assert.True(points[1].PeakRssBytes >= points[0].PeakRssBytes, "a peak never falls");
        Assert.All(points, p =>
        {
            Assert.True(p.TokensPerSecond > 0 && double.IsFinite(p.TokensPerSecond));
            Assert.True(p.RssBytes > 1 << 20 && p.PeakRssBytes >= p.RssBytes);
        });
    }

    [Fact]
    public void A_recurrent_models_state_stays_the_same_size()
    {
        var model = new TinyRecurrentModel(vocabSize: 50, seed: 3);
        var points = GenerationSpeed.Measure(model, new SpeedOptions([1, 40, 300], Warmup: 0), cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal([1, 40, 300], points.Select(p => p.Length));
        Assert.All(points, p => Assert.Equal(TinyRecurrentModel.Hidden * sizeof(float), p.StateBytes));
    }

    [Fact]
    public void State_bytes_count_every_allocated_tensor_once_and_never_the_weights()
    {
        using var cache = (KvCache)stories.Model.NewState(batch: 1);
        Assert.Equal(0, DecodingStateMemory.TensorBytes(cache));
        using (no_grad()) stories.Model.forward(tensor(new long[] { 1, 403, 385 }, [1, 3]), cache).Dispose();
        // the cache allocates 256 slots at first: the bytes are its capacity, not the 3 tokens held
        var c = stories.Model.Config;
        Assert.Equal(256L * c.NumHiddenLayers * 2 * c.NumKeyValueHeads * c.HeadDim * sizeof(float), DecodingStateMemory.TensorBytes(cache));
        cache.Dispose();
        Assert.Equal(0, DecodingStateMemory.TensorBytes(cache));
    }
}
