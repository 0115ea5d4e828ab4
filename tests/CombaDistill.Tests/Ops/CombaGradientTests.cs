using CombaDistill.Ops;
using CsCheck;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Ops;

/// <summary>Backward through Chunkwise against backward through Naive, and against finite differences.</summary>
public class CombaGradientTests
{
    static readonly string[] Names = ["q", "k", "v", "g", "beta", "lambda", "d", "initial state"];

    delegate (Tensor O, Tensor S) Op(CombaInputs x);

    /// <summary>A loss that weighs every output and every final-state entry differently.</summary>
    static Tensor Loss((Tensor O, Tensor S) r, Tensor weightO, Tensor weightS) => (r.O * weightO).sum() + (r.S * weightS).sum();

    static Tensor[] Gradients(Op op, CombaInputs x, Tensor weightO, Tensor weightS)
    {
        using var leaves = x.To(ScalarType.Float64, CPU).RequiringGrad();
        Loss(op(leaves), weightO, weightS).backward();
        return leaves.All.Select(t => t.grad!.detach().clone()).ToArray();
    }

    static (Tensor O, Tensor S) Weights(CombaCase c, long seed)
    {
        var gen = new Generator((ulong)seed + 17);
        return (randn([c.Batch, c.Heads, c.Length, c.ValueDim], dtype: ScalarType.Float64, generator: gen),
                randn([c.Batch, c.Heads, c.KeyDim, c.ValueDim], dtype: ScalarType.Float64, generator: gen));
    }

    static (Tensor O, Tensor S) Chunkwise(CombaInputs x, int chunk) => ChunkwiseComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, x.Scale, x.State, chunk);
    static (Tensor O, Tensor S) Naive(CombaInputs x) => NaiveComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, x.Scale, x.State);

    static readonly Gen<CombaCase> SmallCases =
        from batch in Gen.Int[1, 2]
        from kvHeads in Gen.Int[1, 2]
        from groups in Gen.OneOfConst(1, 2)
        from length in Gen.Int[1, 80]
        from keyDim in Gen.Int[2, 12]     // at Dk = 1, q/‖q‖ is ±1 and its true gradient is 0: relative error would compare rounding noise
        from valueDim in Gen.Int[1, 12]
        from chunk in Gen.OneOfConst(16, 32, 64)
        from withState in Gen.Bool
        from seed in Gen.Int[0, 1_000_000]
        select new CombaCase(batch, kvHeads, groups, length, keyDim, valueDim, chunk, withState, seed);

    [Fact]
    public void Chunkwise_gradients_of_every_input_equal_Naive_in_float64() =>
        SmallCases.Sample(c =>
        {
            using var scope = NewDisposeScope();
            using var x = CombaInputs.Random(c);
            var (wO, wS) = Weights(c, c.Seed);
            var expected = Gradients(Naive, x, wO, wS);
            var actual = Gradients(y => Chunkwise(y, c.ChunkSize), x, wO, wS);
            Assert.Equal(expected.Length, actual.Length);
            for (int i = 0; i < expected.Length; i++)
                Compare.Close(actual[i], expected[i], 1e-8, $"d loss / d {Names[i]} [{c}]");
        }, iter: 25, threads: 1, seed: Environment.GetEnvironmentVariable("CsCheck_Seed"));

    [Fact]
    public void Chunkwise_gradients_match_central_finite_differences_on_a_tiny_case()
    {
        using var scope = NewDisposeScope();
        var c = new CombaCase(Batch: 1, KvHeads: 1, Groups: 2, Length: 5, KeyDim: 3, ValueDim: 2, ChunkSize: 16, WithState: true, Seed: 11);
        using var x = CombaInputs.Random(c);
        var (wO, wS) = Weights(c, c.Seed);
        var analytic = Gradients(y => Chunkwise(y, 16), x, wO, wS);
        const double step = 1e-6;
        var inputs = x.All;
        for (int i = 0; i < inputs.Length; i++)
        {
            var flat = inputs[i].view(-1);
            var numeric = zeros_like(flat);
            for (long e = 0; e < flat.shape[0]; e++)
            {
                var original = flat[e].item<double>();
                flat[e] = original + step;
                var plus = Loss(Chunkwise(x, 16), wO, wS).item<double>();
                flat[e] = original - step;
                var minus = Loss(Chunkwise(x, 16), wO, wS).item<double>();
                flat[e] = original;
                numeric[e] = (plus - minus) / (2 * step);
            }
            Compare.Close(analytic[i], numeric.view_as(inputs[i]), 1e-6, $"finite differences for {Names[i]}");
        }
    }
}
