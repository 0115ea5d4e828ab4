using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CombaDistill.Modeling.Comba;

/// <summary>
/// Depthwise causal convolution over time on (B, T, channels), one kernel per channel, no bias and no activation,
/// identity-initialised (the last tap is 1), so a freshly converted layer sees exactly the teacher's projections.
/// For decoding it takes and returns a cache of the last kernel − 1 inputs (B, channels, kernel − 1).
/// </summary>
public sealed class ShortConvolution : nn.Module
{
    public readonly int Kernel;
    public Parameter weight;     // (channels, 1, kernel): conv1d's depthwise layout; state_dict key "weight"

    public ShortConvolution(string name, long channels, int kernel, Device? device = null, ScalarType? dtype = null) : base(name)
    {
        Kernel = kernel;
        var w = zeros([channels, 1, kernel], dtype: dtype ?? get_default_dtype(), device: device);
        using (no_grad()) w[.., .., kernel - 1] = 1;
        weight = new Parameter(w);
        RegisterComponents();
    }


    /// <param name="x">(B, T, channels)</param>
    /// <param name="cache">(B, channels, kernel − 1) inputs before x, or null for zeros (a sequence start)</param>
    /// <returns>y (B, T, channels) and the new cache</returns>
    public (Tensor Output, Tensor Cache) forward(Tensor x, Tensor? cache)
    {
        using var scope = NewDisposeScope();
        var (batch, channels) = (x.shape[0], x.shape[2]);
        if (Ops.FusedShortConvolution.Use(x, weight, cache))
        {
            // a sequence start on CUDA in bf16: the kernels, in the (B, T, C) layout (COMBADISTILL_FUSED_SHORT_CONV=0: conv1d)
            var fused = Ops.FusedShortConvolution.Forward(x, weight.to(x.dtype));
            var last = Math.Min(Kernel - 1, x.shape[1]);
            var tail = x.narrow(1, x.shape[1] - last, last).transpose(1, 2);
            var fusedCache = last == Kernel - 1 ? tail.contiguous() : cat([zeros([batch, channels, Kernel - 1 - last], dtype: x.dtype, device: x.device), tail], 2);
            return (fused.MoveToOuterDisposeScope(), fusedCache.MoveToOuterDisposeScope());
        }
        var past = cache?.to(x.dtype) ?? zeros([batch, channels, Kernel - 1], dtype: x.dtype, device: x.device);
        var window = cat([past, x.transpose(1, 2)], dim: 2);                   // (B, channels, kernel − 1 + T)
        var y = x.shape[1] == 1
            ? (window * weight.to(x.dtype).squeeze(1)).sum(-1, keepdim: true).transpose(1, 2)     // one decoding step
            : nn.functional.conv1d(window, weight.to(x.dtype), groups: channels).transpose(1, 2);
        var nextCache = window.narrow(2, window.shape[2] - (Kernel - 1), Kernel - 1).contiguous();
        return (y.MoveToOuterDisposeScope(), nextCache.MoveToOuterDisposeScope());
    }
}
