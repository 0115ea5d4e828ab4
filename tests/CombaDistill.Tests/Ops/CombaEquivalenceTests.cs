using CombaDistill.Ops;
using CsCheck;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Ops;

/// <summary>Chunkwise and Recurrent against the Naive reference, on random problems (CsCheck, shrinking).</summary>
public class CombaEquivalenceTests
{
    static readonly Gen<CombaCase> Cases =
        from batch in Gen.Int[1, 2]
        from kvHeads in Gen.Int[1, 2]
        from groups in Gen.OneOfConst(1, 2, 3)
        from length in Gen.Frequency((2, Gen.Int[1, 20]), (3, Gen.Int[21, 300]))
        from keyDim in Gen.Int[1, 24]
        from valueDim in Gen.Int[1, 24]
        from chunk in Gen.OneOfConst(16, 32, 64, 128)
        from withState in Gen.Bool
        from seed in Gen.Int[0, 1_000_000]
        select new CombaCase(batch, kvHeads, groups, length, keyDim, valueDim, chunk, withState, seed);

    static void Sample(Action<CombaCase> check, int iterations) =>
        Cases.Sample(check, iter: iterations, threads: 1, seed: Environment.GetEnvironmentVariable("CsCheck_Seed"));

    static (Tensor O, Tensor S) Naive(CombaInputs x) => NaiveComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, x.Scale, x.State);
    static (Tensor O, Tensor S) Chunkwise(CombaInputs x, int chunk) => ChunkwiseComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, x.Scale, x.State, chunk);
    static (Tensor O, Tensor S) Recurrent(CombaInputs x) => RecurrentComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, x.Scale, x.State);

    [Fact]
    public void Chunkwise_equals_Naive_in_float64() => Sample(c =>
    {
        using var scope = NewDisposeScope();
        using var x = CombaInputs.Random(c);
        var (o, s) = Chunkwise(x, c.ChunkSize);
        var (oRef, sRef) = Naive(x);
        Compare.Close(o, oRef, 1e-10, $"output [{c}]");
        Compare.Close(s, sRef, 1e-10, $"final state [{c}]");
    }, 40);

    [Fact]
    public void Recurrent_equals_Naive_in_float64() => Sample(c =>
    {
        using var scope = NewDisposeScope();
        using var x = CombaInputs.Random(c);
        var (o, s) = Recurrent(x);
        var (oRef, sRef) = Naive(x);
        Compare.Close(o, oRef, 1e-10, $"output [{c}]");
        Compare.Close(s, sRef, 1e-10, $"final state [{c}]");
    }, 25);

    [Fact]
    public void Chunkwise_and_Recurrent_in_float32_equal_Naive_in_float64() => Sample(c =>
    {
        using var scope = NewDisposeScope();
        using var x = CombaInputs.Random(c);
        using var x32 = x.To(ScalarType.Float32, CPU);
        var (oRef, sRef) = Naive(x);
        var (o, s) = Chunkwise(x32, c.ChunkSize);
        Assert.Equal(ScalarType.Float32, o.dtype);
        Compare.Close(o, oRef, 1e-5, $"chunkwise output [{c}]");
        Compare.Close(s, sRef, 1e-5, $"chunkwise final state [{c}]");
        var (oRec, sRec) = Recurrent(x32);
        Compare.Close(oRec, oRef, 1e-5, $"recurrent output [{c}]");
        Compare.Close(sRec, sRef, 1e-5, $"recurrent final state [{c}]");
    }, 30);
}
