using static TorchSharp.torch;

namespace CombaDistill.Ops;

/// <summary>
/// Rotary position embedding as tensor ops, in the rotate_half layout (dimension i of a head pairs with i + D/2):
/// x cos + rotate_half(x) sin, with rotate_half(x) = [−x₂, x₁] for the halves x₁, x₂ of the head dim. The tables come
/// from <c>Modeling.RotaryEmbedding.CosSin</c>; the bf16 Comba kernels apply the same rotation in registers.
/// </summary>
public static class Rotary
{
    /// <summary>Rotates x (…, T, D) by (T, D) tables (type promotion as usual: bf16 x with float32 tables gives float32).</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        var halves = x.chunk(2, dim: -1);
        return x * cos + cat([-halves[1], halves[0]], dim: -1) * sin;
    }

    /// <summary>q and k rotated by the tables in their own dtypes (as the model's layers do), or as they are without tables.</summary>
    public static (Tensor Q, Tensor K) Apply(Tensor q, Tensor k, (Tensor Cos, Tensor Sin)? tables) =>
        tables is { } t ? (Apply(q, t.Cos.to(q.dtype), t.Sin.to(q.dtype)), Apply(k, t.Cos.to(k.dtype), t.Sin.to(k.dtype))) : (q, k);
}
