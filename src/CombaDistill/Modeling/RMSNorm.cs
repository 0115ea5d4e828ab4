using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CombaDistill.Modeling;

/// <summary>
/// Root-mean-square layer norm, computed as Hugging Face does: normalise in float32 (bf16 would lose
/// the small differences the mean of squares is made of), cast back, then scale by the weight in the
/// model's dtype.
/// </summary>
public sealed class RMSNorm : nn.Module<Tensor, Tensor>
{
    readonly double eps;
    public Parameter weight;

    /// <summary>The ε added to the mean of squares.</summary>
    public double Epsilon => eps;

    public RMSNorm(long dim, double eps, ScalarType dtype = ScalarType.Float32, Device? device = null) : base(nameof(RMSNorm))
    {
        this.eps = eps;
        weight = new Parameter(ones(dim, dtype, device));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        // bf16 on CUDA: one kernel each way with the same arithmetic (Ops.FusedRmsNorm; off unless switched on)
        if (Ops.FusedRmsNorm.Use(x, weight)) return Ops.FusedRmsNorm.Forward(x, weight, eps);
        var x32 = x.to(ScalarType.Float32);
        var normed = x32 * (x32.square().mean([-1], keepdim: true) + eps).rsqrt();
        return weight * normed.to(x.dtype);
    }
}
