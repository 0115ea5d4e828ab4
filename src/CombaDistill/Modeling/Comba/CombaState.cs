using static TorchSharp.torch;

namespace CombaDistill.Modeling.Comba;

/// <summary>
/// What one Comba layer carries from token to token: the recurrent state h = Sᵀ (B, H, Dk, Dv), kept in float32
/// (float64 for a float64 model), and, with a short convolution, the last kernel − 1 inputs of each of q, k and v
/// (B, channels, kernel − 1). The caller owns these tensors.
/// </summary>
public sealed record CombaState(Tensor Recurrent, Tensor? QConv = null, Tensor? KConv = null, Tensor? VConv = null) : IDisposable
{
    public CombaState Detached() => new(Recurrent.detach(), QConv?.detach(), KConv?.detach(), VConv?.detach());

    public void Dispose()
    {
        Recurrent.Dispose();
        QConv?.Dispose();
        KConv?.Dispose();
        VConv?.Dispose();
    }
}
