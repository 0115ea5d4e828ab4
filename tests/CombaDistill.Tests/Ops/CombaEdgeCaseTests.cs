using CombaDistill.Ops;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Ops;

/// <summary>Gates at their extremes, long sequences and bad shapes.</summary>
public class CombaEdgeCaseTests
{
    static (Tensor O, Tensor S) Naive(CombaInputs x) => NaiveComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, x.Scale, x.State);
    static (Tensor O, Tensor S) Chunkwise(CombaInputs x, int chunk = 64) => ChunkwiseComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, x.Scale, x.State, chunk);
    static (Tensor O, Tensor S) Recurrent(CombaInputs x) => RecurrentComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, x.Scale, x.State);

    /// <summary>Every form in float64 and float32 against Naive in float64, plus finite float32 gradients.</summary>
    static void AllFormsAgree(CombaInputs x, string what, int chunk = 64)
    {
        using var scope = NewDisposeScope();
        var (oRef, sRef) = Naive(x);
        Assert.True(oRef.isfinite().all().item<bool>() && sRef.isfinite().all().item<bool>(), $"{what}: the reference is not finite");
        var (o, s) = Chunkwise(x, chunk);
        Compare.Close(o, oRef, 1e-10, $"{what}: chunkwise float64 output");
        Compare.Close(s, sRef, 1e-10, $"{what}: chunkwise float64 state");
        var (oRec, sRec) = Recurrent(x);
        Compare.Close(oRec, oRef, 1e-10, $"{what}: recurrent float64 output");
        Compare.Close(sRec, sRef, 1e-10, $"{what}: recurrent float64 state");

        using var x32 = x.To(ScalarType.Float32, CPU).RequiringGrad();
        var (o32, s32) = Chunkwise(x32, chunk);
        Compare.Close(o32, oRef, 1e-5, $"{what}: chunkwise float32 output");
        Compare.Close(s32, sRef, 1e-5, $"{what}: chunkwise float32 state");
        (o32.sum() + s32.sum()).backward();
        foreach (var t in x32.All)
            Assert.True(t.grad!.isfinite().all().item<bool>(), $"{what}: a float32 gradient is not finite");
    }

    static CombaCase Case(int length = 150, bool withState = true, int seed = 5) =>
        new(Batch: 2, KvHeads: 1, Groups: 2, Length: length, KeyDim: 8, ValueDim: 6, ChunkSize: 64, WithState: withState, Seed: seed);

    [Fact]
    public void No_decay_g_equals_zero()
    {
        using var x = CombaInputs.Random(Case());
        x.G.zero_();
        AllFormsAgree(x, "g = 0");
    }

    [Fact]
    public void Beta_near_one_with_lambda_one_gives_transition_eigenvalues_near_zero_and_negative()
    {
        using var x = CombaInputs.Random(Case(seed: 6));
        x.Beta.fill_(1 - 1e-7);
        x.Lambda.fill_(1.0);
        // first half α = 1 (eigenvalue α − βλ ≈ 0), second half α = e⁻³ (eigenvalue ≈ −0.95)
        x.G.narrow(2, 0, 75).zero_();
        x.G.narrow(2, 75, 75).fill_(-3.0);
        AllFormsAgree(x, "β → 1, λ = 1");
    }

    [Fact]
    public void Very_strong_decay()
    {
        using var x = CombaInputs.Random(Case(seed: 7), logDecayMax: 60);   // α down to e⁻⁶⁰
        AllFormsAgree(x, "g ∈ (−60, 0)");
        x.G.fill_(-1e4);                                                       // α underflows to exactly 0
        AllFormsAgree(x, "g = −10⁴");
    }

    [Fact]
    public void Sixteen_thousand_tokens_in_float32_stay_finite_and_correct()
    {
        using var scope = NewDisposeScope();
        const int length = 16384;
        var c = new CombaCase(Batch: 1, KvHeads: 1, Groups: 2, Length: length, KeyDim: 8, ValueDim: 8, ChunkSize: 64, WithState: false, Seed: 9);
        using var x = CombaInputs.Random(c, logDecayMax: 0.05);
        // stretches with no decay and β → 1 (the state only ever gets overwritten, never shrinks) and stretches of strong decay
        x.G.narrow(2, 4000, 4000).zero_();
        x.Beta.narrow(2, 4000, 4000).fill_(1 - 1e-6);
        x.G.narrow(2, 12000, 1000).fill_(-20);
        x.V.mul_(100);   // large values: nothing may overflow in float32
        var (oRef, sRef) = Naive(x);
        using var x32 = x.To(ScalarType.Float32, CPU);
        var (o, s) = Chunkwise(x32);
        Compare.Close(o, oRef, 1e-5, "T = 16384 float32 output");
        Compare.Close(s, sRef, 1e-5, "T = 16384 float32 state");
    }

    [Fact]
    public void Zero_keys_and_queries_stay_finite()
    {
        using var x = CombaInputs.Random(Case(length: 40, seed: 8));
        x.K.narrow(2, 10, 5).zero_();
        x.Q.narrow(2, 20, 5).zero_();
        AllFormsAgree(x, "zero keys and queries", chunk: 16);
    }

    [Fact]
    public void Bf16_inputs_run_in_float32_and_return_bf16()
    {
        using var scope = NewDisposeScope();
        using var x = CombaInputs.Random(Case(length: 70, seed: 10)).To(ScalarType.BFloat16, CPU);
        var (o, s) = Chunkwise(x);
        Assert.Equal(ScalarType.BFloat16, o.dtype);
        Assert.Equal(ScalarType.Float32, s.dtype);
        using var x64 = x.To(ScalarType.Float64, CPU);   // the same (bf16-rounded) numbers
        var (oRef, sRef) = Naive(x64);
        Compare.Close(o, oRef, 5e-3, "bf16 output");
        Compare.Close(s, sRef, 1e-5, "bf16 state (kept in float32)");
    }

    [Fact]
    public void Bad_shapes_and_chunk_sizes_are_clear_errors()
    {
        using var scope = NewDisposeScope();
        using var x = CombaInputs.Random(new CombaCase(1, 2, 3, 10, 4, 5, 16, true, 1));
        var e = Assert.Throws<ArgumentException>(() => ChunkwiseComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, 1.0, x.State, chunkSize: 48));
        Assert.Contains("chunk size 48", e.Message);
        e = Assert.Throws<ArgumentException>(() => NaiveComba.Forward(x.Q, x.K.narrow(1, 0, 1).expand(1, 4, 10, 4), x.V, x.G, x.Beta, x.Lambda, x.D, 1.0));
        Assert.Contains("multiple", e.Message);
        e = Assert.Throws<ArgumentException>(() => ChunkwiseComba.Forward(x.Q, x.K, x.V.narrow(2, 0, 9), x.G, x.Beta, x.Lambda, x.D, 1.0));
        Assert.Contains("v has shape (1, 2, 9, 5)", e.Message);
        e = Assert.Throws<ArgumentException>(() => RecurrentComba.Step(x.Q.select(2, 0), x.K.select(2, 0), x.V.select(2, 0), x.G.select(2, 0), x.Beta.select(2, 0), x.Lambda, x.D, 1.0, x.State!.transpose(-1, -2)));
        Assert.Contains("initial state", e.Message);
    }
}
