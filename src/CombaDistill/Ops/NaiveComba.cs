using static TorchSharp.torch;

namespace CombaDistill.Ops;

/// <summary>
/// The Comba recurrence written literally, one token at a time, in the transition-matrix form
///     S_t = S_{t−1} (α_t I − β_t λ k̂_t k̂_tᵀ) + β_t v_t k̂_tᵀ,    o_t = s · S_t (q̂_t − d k̂_t)
/// with S (Dv × Dk) per query head. This is the reference every other form is tested against; it shares
/// no algebra with them (no u-form, no chunking, GQA by repeat_interleave), so agreement means something.
/// O(T · Dv · Dk²) and one autograd node per step: for tests and benchmarks, not for training.
/// Layout: see <see cref="CombaShape"/>. Runs in float64 for float64 inputs, else float32.
/// </summary>
public static class NaiveComba
{
    /// <returns>o (B, H, T, Dv) in q's dtype, and the final state h = Sᵀ (B, H, Dk, Dv) in the compute precision.</returns>
    public static (Tensor Output, Tensor FinalState) Forward(
        Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor lambda, Tensor d, double scale,
        Tensor? initialState = null)
    {
        var shape = CombaShape.OfSequence(q, k, v, g, beta, lambda, d, initialState);
        var (batch, heads, length, dk, dv) = (shape.Batch, shape.Heads, shape.Length, shape.KeyDim, shape.ValueDim);
        using var scope = NewDisposeScope();
        var dtype = CombaMath.ComputeType(q);

        var qHat = CombaMath.L2Normalize(q.to(dtype));
        var kHat = CombaMath.L2Normalize(k.to(dtype)).repeat_interleave(shape.Groups, dim: 1);
        var values = v.to(dtype).repeat_interleave(shape.Groups, dim: 1);
        var alpha = g.to(dtype).exp();
        var b = beta.to(dtype);
        var lam = lambda.to(dtype).view(1, heads, 1, 1);
        var dCorr = d.to(dtype).view(1, heads, 1);
        var identity = eye(dk, dtype: dtype, device: q.device);

        // S (B, H, Dv, Dk)
        var S = initialState is null ? zeros(batch, heads, dv, dk, dtype: dtype, device: q.device) : initialState.to(dtype).transpose(-1, -2);
        var outputs = new List<Tensor>((int)length);
        for (long t = 0; t < length; t++)
        {
            var kt = kHat.select(2, t);                                       // (B, H, Dk)
            var at = alpha.select(2, t).view(batch, heads, 1, 1);
            var bt = b.select(2, t).view(batch, heads, 1, 1);
            var kkT = kt.unsqueeze(-1) * kt.unsqueeze(-2);                    // (B, H, Dk, Dk)
            var transition = at * identity - bt * lam * kkT;
            var write = bt * values.select(2, t).unsqueeze(-1) * kt.unsqueeze(-2);   // β v k̂ᵀ (B, H, Dv, Dk)
            S = S.matmul(transition) + write;
            var readout = qHat.select(2, t) - dCorr * kt;                     // q̂ − d k̂
            outputs.Add(scale * S.matmul(readout.unsqueeze(-1)).squeeze(-1)); // (B, H, Dv)
        }
        var o = stack(outputs, dim: 2).to(q.dtype);
        return (o.MoveToOuterDisposeScope(), S.transpose(-1, -2).contiguous().MoveToOuterDisposeScope());
    }
}
