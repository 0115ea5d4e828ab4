using CombaDistill.Runtime.Cuda;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Ops;

/// <summary>
/// The Comba layer's short convolution (depthwise, causal, kernel 4) at a sequence start, on (B, T, C) bf16 CUDA
/// activations, as three kernels (kernels/short_conv.cu): forward, the input's gradient and the weight's. conv1d needs
/// the (B, C, T) layout, so each call pays a transposed copy of its input (with the zeros in front) and autograd the
/// layout copies of the gradients, around a depthwise convolution whose weight gradient is a reduction over B·T; here
/// each pass reads its inputs and writes its output once, in the layout the projections give.
/// <para>
/// <b>On by default</b> (<see cref="EnvironmentVariable"/>=0 turns it off): its GPU test (FusedShortConvolutionTests,
/// against conv1d in float64) passed on an H100, and with it and the one-launch gradient norms `bench distill` at the
/// 1B shape went from 70,356 to 83,120 tokens/s in alignment and from 28,439 to 30,032 in KL (docs/benchmarks.md).
/// Where the kernels cannot be built, conv1d takes over with a warning.
/// </para>
/// </summary>
public static class FusedShortConvolution
{
    public const string EnvironmentVariable = "COMBADISTILL_FUSED_SHORT_CONV";
    public const int Kernel = 4;
    const int Threads = 256, RowsPerBlock = 64;
    static readonly EmbeddedModule Kernels = new("kernels/short_conv.cu",
        ["short_conv_fwd", "short_conv_bwd_x", "short_conv_bwd_w", "short_conv_fwd8", "short_conv_bwd_x8", "short_conv_bwd_w8"]);

    public static bool Enabled => Runtime.EnvironmentSwitch.IsOn(EnvironmentVariable, whenUnset: true);

    /// <summary>
    /// <see cref="WideVariable"/>=1 takes the kernels that handle eight channels a thread with 16-byte loads (where C is
    /// a multiple of 8), written to bring the three convolutions of a 1B-shaped layer (0.64 ms forward + backward on
    /// an H100, several times their traffic at the memory bandwidth) towards that floor. Off until FusedShortConvolutionTests
    /// has passed with them on a GPU and `bench distill` has measured them.
    /// </summary>
    public const string WideVariable = "COMBADISTILL_SHORT_CONV_WIDE";

    /// <summary>Whether a call on these tensors takes the eight-channel kernels (switched on, C a multiple of 8, 16-byte aligned rows, 32-bit counts).</summary>
    public static bool Wide(params Tensor[] tensors)
    {
        if (!Runtime.EnvironmentSwitch.IsOn(WideVariable, whenUnset: false)) return false;
        var x = tensors[0];
        var (rows, channels) = (x.shape[0] * x.shape[1], x.shape[2]);
        // the kernels count in 32-bit ints and step by the grid (at most 16 blocks of 256 threads an SM on any device we know): room for one stride
        return channels % 8 == 0 && rows * (channels / 8) <= int.MaxValue - (1L << 24) && rows <= int.MaxValue
               && tensors.All(t => t.is_contiguous() && (long)TensorMemory.DataPointer(t) % 16 == 0);
    }

    /// <summary>Whether the kernels take this call: (B, T, C) bf16 CUDA input, a (C, 1, 4) weight on its device, no cache (a sequence start).</summary>
    public static bool Takes(Tensor x, Tensor weight, Tensor? cache) =>
        cache is null && x.device_type == DeviceType.CUDA && x.dtype == ScalarType.BFloat16 && x.dim() == 3 && x.numel() > 0
        && weight.dim() == 3 && weight.shape[0] == x.shape[2] && weight.shape[1] == 1 && weight.shape[2] == Kernel
        && weight.device_type == DeviceType.CUDA && weight.device_index == x.device_index
        && x.shape[2] <= int.MaxValue && x.shape[1] <= int.MaxValue;

    /// <summary>Enabled, <see cref="Takes"/> the call, and built for the device (a failure warns once and answers false from then on).</summary>
    public static bool Use(Tensor x, Tensor weight, Tensor? cache) =>
        Enabled && Takes(x, weight, cache)
        && Kernels.TryFor(x.device, "the fused short-convolution kernels", "conv1d runs instead") is not null;

    /// <summary>y (B, T, C) bf16 for x (B, T, C) and the weight (C, 1, 4), zeros before t = 0; differentiable in both.</summary>
    public static Tensor Forward(Tensor x, Tensor weight)
    {
        if (!Takes(x, weight, null)) throw new ArgumentException("FusedShortConvolution takes (B, T, C) bf16 CUDA input and a (C, 1, 4) weight on its device");
        return Function.apply(x.contiguous(), weight)[0];
    }

    static int Blocks(CudaDevice device, long items) => (int)Math.Max(1, Math.Min((items + Threads - 1) / Threads, 16L * device.MultiprocessorCount));

    sealed class Function : autograd.MultiTensorFunction<Function>
    {
        public override string Name => "FusedShortConvolution";

        public override List<Tensor> forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var (x, weight) = ((Tensor)vars[0], (Tensor)vars[1]);
            var (T, C) = ((int)x.shape[1], (int)x.shape[2]);
            using var w = weight.detach().to(ScalarType.Float32).reshape(C, Kernel).contiguous();
            var y = empty_like(x);
            var device = CudaDevice.For(x.device);
            if (Wide(x, y, w))
            {
                var groups = (int)(x.numel() / 8);
                Kernels.For(device).Kernel("short_conv_fwd8").Launch((Blocks(device, groups), 1, 1), (Threads, 1, 1), 0, x, w, y, T, C / 8, groups);
            }
            else Kernels.For(device).Kernel("short_conv_fwd").Launch((Blocks(device, x.numel()), 1, 1), (Threads, 1, 1), 0, x, w, y, T, C, x.numel());
            ctx.save_for_backward([x, weight]);
            return [y];
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, List<Tensor> grads) =>
            GradientHandoff.Guard(Name, () => Backward(ctx, grads));

        static List<Tensor> Backward(autograd.AutogradContext ctx, List<Tensor> grads)
        {
            var saved = ctx.get_saved_variables();
            var (x, weight) = (saved[0], saved[1]);
            var (B, T, C) = (x.shape[0], (int)x.shape[1], (int)x.shape[2]);
            var device = CudaDevice.For(x.device);
            var module = Kernels.For(device);
            Tensor dx, dw;
            using (var scope = NewDisposeScope())
            {
                var dy = grads[0].to(ScalarType.BFloat16).contiguous();
                using var w = weight.detach().to(ScalarType.Float32).reshape(C, Kernel).contiguous();
                dx = empty_like(x);
                var dw32 = zeros([C, Kernel], ScalarType.Float32, x.device);
                var rows = B * T;
                if (Wide(x, dy, dx, w))
                {
                    var groups = C / 8;
                    var total = (int)(rows * groups);
                    module.Kernel("short_conv_bwd_x8").Launch((Blocks(device, total), 1, 1), (Threads, 1, 1), 0, dy, w, dx, T, groups, total);
                    // about four blocks an SM in all, each summing a run of rows; the grid's y is at most 65,535
                    var across = (groups + 31) / 32;
                    var chunks = (int)Math.Clamp((4L * device.MultiprocessorCount + across - 1) / across, 1, Math.Min(65535, (rows + 7) / 8));
                    var perBlock = (int)((rows + chunks - 1) / chunks);
                    chunks = (int)((rows + perBlock - 1) / perBlock);
                    module.Kernel("short_conv_bwd_w8").Launch((across, chunks, 1), (32, 8, 1), 8 * 32 * 33 * sizeof(float),
                        dy, x, dw32, T, groups, (int)rows, perBlock);
                }
                else
                {
                    module.Kernel("short_conv_bwd_x").Launch((Blocks(device, x.numel()), 1, 1), (Threads, 1, 1), 0, dy, w, dx, T, C, x.numel());
                    var perBlock = (int)Math.Max(RowsPerBlock, (rows + 65534) / 65535);   // the grid's y is at most 65,535
                    module.Kernel("short_conv_bwd_w").Launch(((C + Threads - 1) / Threads, (int)((rows + perBlock - 1) / perBlock), 1), (Threads, 1, 1), 0,
                        dy, x, dw32, T, C, rows, perBlock);
                }
                dw = dw32.view(C, 1, Kernel).to(weight.dtype);
                dx.MoveToOuterDisposeScope();
                dw.MoveToOuterDisposeScope();
            }
            foreach (var t in saved.Concat(grads)) t?.Dispose();   // the wrappers only: libtorch keeps its own references
            return GradientHandoff.Return(dx, dw);
        }
    }
}
