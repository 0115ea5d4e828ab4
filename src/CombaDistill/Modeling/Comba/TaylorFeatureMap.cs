using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Modeling.Comba;

/// <summary>
/// The second-order Taylor feature map of exp(q·k/√D) (as in Based, Arora et al. 2024), applied to q and k per head
/// before the recurrence:
/// <code>
///   φ(x) = [ 1,  x / D^¼,  (x_i x_j · w_ij / √(2D))_{i ≤ j} ]      w_ii = 1, w_ij = √2 for i &lt; j
///   φ(q)·φ(k) = 1 + q·k/√D + (q·k)² / (2D)
/// </code>
/// 1 + D + D(D+1)/2 features (45 for D = 8): the symmetric half of x ⊗ x carries the same inner product as the whole.
/// The state then holds that many keys instead of D, and the read-out, linear in φ(q), is quadratic in q. The
/// kernel is positive (1 + s + s²/2 > 0 for every s), which is what makes the normalised read-out a weighted average
/// (see <see cref="CombaConfig.NormalizeReadout"/>).
/// </summary>
public static class TaylorFeatureMap
{
    public static int Dimension(int headDim) => 1 + headDim + headDim * (headDim + 1) / 2;

    /// <param name="x">(…, D)</param>
    /// <returns>(…, <see cref="Dimension"/>(D)) in x's dtype</returns>
    public static Tensor Apply(Tensor x)
    {
        using var scope = NewDisposeScope();
        var d = (int)x.shape[^1];
        var (rows, cols, weights) = Pairs(d, x.device, x.dtype);
        var quadratic = x.index_select(-1, rows) * x.index_select(-1, cols) * weights;
        var one = ones_like(x.narrow(-1, 0, 1));
        return cat([one, x / Math.Pow(d, 0.25), quadratic], -1).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The pairs i ≤ j and their weights w_ij / √(2D), built once per (D, device, dtype) rather than on every call,
    /// which on a GPU was three host-to-device copies per layer and call.
    /// </summary>
    static (Tensor Rows, Tensor Cols, Tensor Weights) Pairs(int d, Device device, ScalarType dtype) =>
        pairs.GetOrAdd((d, device.type, device.index, dtype), key =>
        {
            var (rows, cols, weights) = (new List<long>(), new List<long>(), new List<double>());
            for (var i = 0; i < d; i++)
            {
                for (var j = i; j < d; j++)
                {
                    rows.Add(i);
                    cols.Add(j);
                    weights.Add((i == j ? 1.0 : Math.Sqrt(2)) / Math.Sqrt(2.0 * d));
                }
            }
            var at = new Device(key.Type, key.Index);
            // cached for the process's lifetime, so no dispose scope may own them
            return (tensor(rows.ToArray(), device: at).DetachFromDisposeScope(), tensor(cols.ToArray(), device: at).DetachFromDisposeScope(),
                tensor(weights.ToArray(), dtype: ScalarType.Float64).to(key.DType, at).DetachFromDisposeScope());
        });

    static readonly System.Collections.Concurrent.ConcurrentDictionary<(int D, DeviceType Type, int Index, ScalarType DType), (Tensor Rows, Tensor Cols, Tensor Weights)> pairs = new();
}
