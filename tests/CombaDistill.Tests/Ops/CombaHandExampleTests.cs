using CombaDistill.Ops;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Ops;

/// <summary>
/// Two tokens worked out by hand, so the order "read the UN-decayed state, then decay" can never drift.
/// One head, Dk = 2, Dv = 1, λ = 0.5, d = 0.5, s = 2. S is 1 × 2 (a row vector), starting at 0.
///
///   t = 1: k₁ = (2, 0) → k̂₁ = (1, 0);  v₁ = 2;  β₁ = 0.5;  g₁ = 0 (α₁ = 1);  q₁ = (3, 4) → q̂₁ = (0.6, 0.8)
///          u₁ = β₁ (v₁ − λ S₀ k̂₁) = 0.5 · 2 = 1
///          S₁ = α₁ S₀ + u₁ k̂₁ᵀ = (1, 0)
///          o₁ = s · S₁ (q̂₁ − d k̂₁) = 2 · (1, 0)·(0.1, 0.8) = 0.2
///   t = 2: k₂ = (3, 4) → k̂₂ = (0.6, 0.8);  v₂ = 1;  β₂ = 0.5;  g₂ = ln 0.5 (α₂ = 0.5);  q₂ = (0, 2) → q̂₂ = (0, 1)
///          S₁ k̂₂ = 0.6                          (the UN-decayed S₁)
///          u₂ = 0.5 · (1 − 0.5 · 0.6) = 0.35
///          S₂ = 0.5 · (1, 0) + 0.35 · (0.6, 0.8) = (0.71, 0.28)
///          check with the transition form: S₁ (α₂ I − β₂ λ k̂₂k̂₂ᵀ) + β₂ v₂ k̂₂ᵀ
///              = (1, 0) [[0.5 − 0.09, −0.12], [−0.12, 0.5 − 0.16]] + (0.3, 0.4) = (0.41 + 0.3, −0.12 + 0.4) = (0.71, 0.28)
///          q̂₂ − d k̂₂ = (0, 1) − (0.3, 0.4) = (−0.3, 0.6)
///          o₂ = 2 · (0.71 · −0.3 + 0.28 · 0.6) = 2 · (−0.213 + 0.168) = −0.09
///   The gated-delta-rule order (decay before the read) would give u₂ = 0.5 · (1 − 0.5 · 0.5 · 0.6) = 0.425,
///   S₂ = (0.755, 0.34) and o₂ = −0.045 instead.
/// </summary>
public class CombaHandExampleTests
{
    static readonly double[] ExpectedOutput = [0.2, -0.09];
    static readonly double[] ExpectedState = [0.71, 0.28];     // h = S₂ᵀ, (Dk, Dv) = (2, 1)
    static readonly double[] DecayBeforeReadOutput = [0.2, -0.045];

    static CombaInputs Example(ScalarType dtype) => new CombaInputs
    {
        Q = tensor(new double[] { 3, 4, 0, 2 }).view(1, 1, 2, 2),
        K = tensor(new double[] { 2, 0, 3, 4 }).view(1, 1, 2, 2),
        V = tensor(new double[] { 2, 1 }).view(1, 1, 2, 1),
        G = tensor(new double[] { 0, Math.Log(0.5) }).view(1, 1, 2),
        Beta = tensor(new double[] { 0.5, 0.5 }).view(1, 1, 2),
        Lambda = tensor(new double[] { 0.5 }),
        D = tensor(new double[] { 0.5 }),
        Scale = 2.0,
    }.To(dtype, CPU);

    public static TheoryData<string, ScalarType> Ops() => new()
    {
        { "naive", ScalarType.Float64 }, { "recurrent", ScalarType.Float64 }, { "chunkwise16", ScalarType.Float64 },
        { "chunkwise128", ScalarType.Float64 }, { "naive", ScalarType.Float32 }, { "recurrent", ScalarType.Float32 },
        { "chunkwise64", ScalarType.Float32 },
    };

    static (Tensor O, Tensor S) Run(string op, CombaInputs x) => op switch
    {
        "naive" => NaiveComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, x.Scale),
        "recurrent" => RecurrentComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, x.Scale),
        _ => ChunkwiseComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, x.Scale, chunkSize: int.Parse(op["chunkwise".Length..])),
    };

    [Theory]
    [MemberData(nameof(Ops))]
    public void Two_steps_match_the_hand_computed_values(string op, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        using var x = Example(dtype);
        var (o, s) = Run(op, x);
        var tolerance = dtype == ScalarType.Float64 ? 1e-14 : 1e-6;
        var outputs = o.to(ScalarType.Float64).data<double>().ToArray();
        var state = s.to(ScalarType.Float64).data<double>().ToArray();
        Assert.Equal(new long[] { 1, 1, 2, 1 }, o.shape);
        Assert.Equal(new long[] { 1, 1, 2, 1 }, s.shape);
        for (int i = 0; i < 2; i++)
        {
            Assert.True(Math.Abs(outputs[i] - ExpectedOutput[i]) <= tolerance, $"{op}: o[{i}] = {outputs[i]}, expected {ExpectedOutput[i]}");
            Assert.True(Math.Abs(state[i] - ExpectedState[i]) <= tolerance, $"{op}: h[{i}] = {state[i]}, expected {ExpectedState[i]}");
        }
        // the example does tell the two orders apart
        Assert.True(Math.Abs(outputs[1] - DecayBeforeReadOutput[1]) > 0.04);
    }
}
