using static TorchSharp.torch;

namespace CombaDistill.Ops;

/// <summary>
/// One Comba token from a state, for decoding, in the u-form: read from the UN-decayed previous state,
/// then decay and write —
///     u_t = β_t (v_t − λ S_{t−1} k̂_t),    S_t = α_t S_{t−1} + u_t k̂_tᵀ,    o_t = s · S_t (q̂_t − d k̂_t).
/// (Decaying before the read is the gated delta rule's order, not Comba's.) With h = Sᵀ stored as
/// (B, H, Dk, Dv), S k̂ is k̂ᵀh and u k̂ᵀ is k̂ uᵀ. Prefill with <see cref="ChunkwiseComba"/> and continue
/// here: both keep the state in the same layout and precision.
/// </summary>
public static class RecurrentComba
{
    /// <summary>
    /// q (B, H, Dk), k (B, Hkv, Dk), v (B, Hkv, Dv), g and beta (B, H), lambda and d (H), state (B, H, Dk, Dv)
    /// or null for zeros.
    /// </summary>
    /// <returns>o (B, H, Dv) in q's dtype and the new state in the compute precision (float64 or float32).</returns>
    public static (Tensor Output, Tensor State) Step(
        Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor lambda, Tensor d, double scale, Tensor? state)
    {
        var shape = CombaShape.OfStep(q, k, v, g, beta, lambda, d, state);
        using var scope = NewDisposeScope();
        var dtype = CombaMath.ComputeType(q);
        var (batch, heads, dk, dv) = (shape.Batch, shape.Heads, shape.KeyDim, shape.ValueDim);

        // KV head j serves query heads j·G … j·G + G − 1: a broadcast view, copied only at this token.
        Tensor PerQueryHead(Tensor x) => x.unsqueeze(2).expand(batch, shape.KvHeads, shape.Groups, x.shape[^1]).reshape(batch, heads, x.shape[^1]);
        var qHat = CombaMath.L2Normalize(q.to(dtype));
        var kHat = PerQueryHead(CombaMath.L2Normalize(k.to(dtype)));
        var values = PerQueryHead(v.to(dtype));
        var h = state?.to(dtype) ?? zeros(batch, heads, dk, dv, dtype: dtype, device: q.device);

        var read = kHat.unsqueeze(-2).matmul(h).squeeze(-2);                          // S_{t−1} k̂ (B, H, Dv)
        var u = beta.to(dtype).unsqueeze(-1) * (values - lambda.to(dtype).view(1, heads, 1) * read);
        var next = g.to(dtype).exp().view(batch, heads, 1, 1) * h + kHat.unsqueeze(-1) * u.unsqueeze(-2);
        var readout = qHat - d.to(dtype).view(1, heads, 1) * kHat;
        var o = (scale * readout.unsqueeze(-2).matmul(next).squeeze(-2)).to(q.dtype);
        return (o.MoveToOuterDisposeScope(), next.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// <see cref="Step"/> over every token of a (B, ·, T, ·) sequence in the layout of <see cref="CombaShape"/>;
    /// for tests and short continuations.
    /// </summary>
    public static (Tensor Output, Tensor FinalState) Forward(
        Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor lambda, Tensor d, double scale,
        Tensor? initialState = null)
    {
        var shape = CombaShape.OfSequence(q, k, v, g, beta, lambda, d, initialState);
        using var scope = NewDisposeScope();
        var state = initialState;
        var outputs = new List<Tensor>((int)shape.Length);
        for (long t = 0; t < shape.Length; t++)
        {
            var (o, next) = Step(q.select(2, t), k.select(2, t), v.select(2, t), g.select(2, t), beta.select(2, t), lambda, d, scale, state);
            outputs.Add(o);
            state = next;
        }
        var result = stack(outputs, dim: 2);
        return (result.MoveToOuterDisposeScope(), state!.MoveToOuterDisposeScope());
    }
}
