using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Ops;

/// <summary>
/// The sizes of one Comba call, checked once. The layout is scaled_dot_product_attention's (B, heads, T, D):
/// <code>
///   q     (B, H,   T, Dk)     per query head
///   k     (B, Hkv, T, Dk)     per KV head (GQA: query head h reads KV head h / (H / Hkv))
///   v     (B, Hkv, T, Dv)     per KV head
///   g     (B, H,   T)         log decay, α = exp(g), g ≤ 0
///   beta  (B, H,   T)         in (0, 1)
///   lambda (H), d (H)         per query head
///   state (B, H, Dk, Dv)      h = Sᵀ, one per query head because g, β, λ and q are
/// </code>
/// q and k are L2-normalised inside every op (<see cref="CombaMath.L2Normalize"/>), so callers pass raw projections.
/// </summary>
public readonly record struct CombaShape(long Batch, long Heads, long KvHeads, long Length, long KeyDim, long ValueDim)
{
    public long Groups => Heads / KvHeads;

    /// <summary>Checks a whole-sequence call (time on dimension 2).</summary>
    public static CombaShape OfSequence(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor lambda, Tensor d, Tensor? state)
    {
        Rank(q, 4, "q", "(B, H, T, Dk)");
        Rank(k, 4, "k", "(B, Hkv, T, Dk)");
        Rank(v, 4, "v", "(B, Hkv, T, Dv)");
        var s = new CombaShape(q.shape[0], q.shape[1], k.shape[1], q.shape[2], q.shape[3], v.shape[3]).CheckHeads();
        s.Expect(k, "k", s.Batch, s.KvHeads, s.Length, s.KeyDim);
        s.Expect(v, "v", s.Batch, s.KvHeads, s.Length, s.ValueDim);
        s.Expect(g, "g", s.Batch, s.Heads, s.Length);
        s.Expect(beta, "beta", s.Batch, s.Heads, s.Length);
        s.CheckCommon(lambda, d, state);
        if (s.Length < 1) throw new ArgumentException("Comba: the sequence is empty (T = 0)");
        return s;
    }

    /// <summary>Checks a one-token call (no time dimension), as a sequence of length 1.</summary>
    public static CombaShape OfStep(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor lambda, Tensor d, Tensor? state)
    {
        Rank(q, 3, "q", "(B, H, Dk)");
        Rank(k, 3, "k", "(B, Hkv, Dk)");
        Rank(v, 3, "v", "(B, Hkv, Dv)");
        var s = new CombaShape(q.shape[0], q.shape[1], k.shape[1], 1, q.shape[2], v.shape[2]).CheckHeads();
        s.Expect(k, "k", s.Batch, s.KvHeads, s.KeyDim);
        s.Expect(v, "v", s.Batch, s.KvHeads, s.ValueDim);
        s.Expect(g, "g", s.Batch, s.Heads);
        s.Expect(beta, "beta", s.Batch, s.Heads);
        s.CheckCommon(lambda, d, state);
        return s;
    }

    CombaShape CheckHeads()
    {
        if (KvHeads < 1 || Heads % KvHeads != 0)
            throw new ArgumentException($"Comba: q has {Heads} heads and k {KvHeads}; the first must be a multiple of the second (GQA)");
        return this;
    }

    void CheckCommon(Tensor lambda, Tensor d, Tensor? state)
    {
        Expect(lambda, "lambda", Heads);
        Expect(d, "d", Heads);
        if (state is not null) Expect(state, "initial state", Batch, Heads, KeyDim, ValueDim);
    }

    void Expect(Tensor t, string name, params long[] want)
    {
        if (!t.shape.SequenceEqual(want))
            throw new ArgumentException($"Comba: {name} has shape ({string.Join(", ", t.shape)}); expected ({string.Join(", ", want)}) for q ({Batch}, {Heads}, T, {KeyDim}), k/v with {KvHeads} heads and Dv = {ValueDim}");
        if (!t.is_floating_point())
            throw new ArgumentException($"Comba: {name} is {t.dtype}; a floating-point tensor is required");
    }

    static void Rank(Tensor t, int rank, string name, string layout)
    {
        if (t.dim() != rank) throw new ArgumentException($"Comba: {name} has {t.dim()} dimensions; expected {layout}");
    }
}

/// <summary>Small pieces every Comba op shares, so that they agree bit for bit where they can.</summary>
public static class CombaMath
{
    /// <summary>Norms below this are treated as this (a zero vector stays zero instead of becoming NaN).</summary>
    public const double NormFloor = 1e-6;

    /// <summary>
    /// x / max(‖x‖, 1e-6) over the last dimension: exactly unit length for any ordinary vector (so hand-worked
    /// examples hold exactly) and finite, with a finite gradient, at zero.
    /// </summary>
    public static Tensor L2Normalize(Tensor x)
    {
        // max(‖x‖, floor) as sqrt(max(Σ x², floor²)), not linalg.vector_norm: TorchSharp's vector_norm turns its order
        // into a Scalar of its own for the call, which has the lifetime problem described at NormFloorSquaredScalar. The
        // floor goes under the root so that a zero vector's gradient stays finite (sqrt's is infinite at 0, and
        // clamp's zero times it would be NaN).
        using var squares = x * x;
        using var sum = squares.sum([-1], keepdim: true);
        using var floored = sum.clamp_min(NormFloorSquaredScalar);
        using var norm = floored.sqrt();
        return x / norm;
    }

    /// <summary>
    /// <see cref="NormFloor"/>² as one Scalar that a static field keeps alive. A Scalar made by implicit conversion at
    /// the call is unreachable once the op has read its handle; it has a finalizer and no dispose scope holds it, so a
    /// collection on another thread could free it while libtorch still reads it (a CI run failed so, and
    /// ScalarLifetimeTests reproduces it). Scalars are never tracked by dispose scopes, so this one is never disposed.
    /// </summary>
    static readonly TorchSharp.Scalar NormFloorSquaredScalar = (NormFloor * NormFloor).ToScalar();

    /// <summary>
    /// The precision the recurrence runs in: float64 stays float64 (the reference), everything else
    /// (float32, bf16, fp16) runs in float32, because the state accumulates over thousands of steps
    /// and solve_triangular has no half-precision kernels.
    /// </summary>
    public static ScalarType ComputeType(Tensor q) => q.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
}
