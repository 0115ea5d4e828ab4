using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CombaDistill.Modeling.Comba;

/// <summary>
/// RMSNorm over the last dimension (one head's values), one weight shared by all heads. Unlike
/// <see cref="CombaDistill.Modeling.RMSNorm"/> it keeps float64 in float64, so a float64 layer can be checked against the
/// float64 reference; other dtypes are normalised in float32.
/// </summary>
public sealed class HeadRmsNorm : nn.Module<Tensor, Tensor>
{
    public Parameter weight;
    readonly double eps;

    public HeadRmsNorm(string name, long size, double eps, Device? device = null, ScalarType? dtype = null) : base(name)
    {
        weight = new Parameter(ones([size], dtype: dtype ?? get_default_dtype(), device: device));
        this.eps = eps;
        RegisterComponents();
    }


    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var compute = x.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
        var xf = x.to(compute);
        var normed = xf * (xf.pow(2).mean([-1], keepdim: true) + eps).rsqrt() * weight.to(compute);
        return normed.to(x.dtype).MoveToOuterDisposeScope();
    }
}
