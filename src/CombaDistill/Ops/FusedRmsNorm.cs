using CombaDistill.Runtime.Cuda;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Ops;

/// <summary>
/// RMSNorm of bf16 rows in one CUDA kernel each way (kernels/rms_norm.cu), with Hugging Face's arithmetic: float32
/// statistics, the normalised row rounded to bf16, then the bf16 weight. As tensor ops the same norm takes eight
/// passes forward (a float32 copy, its square, the mean, the reciprocal root, the product, the cast back, the weight)
/// and more backward; at the 1B shape a step runs 33 norms in the teacher and as many in the student.
/// <para>
/// <b>Off by default</b> (<see cref="EnvironmentVariable"/>=1 turns it on) until its GPU test (FusedRmsNormTests,
/// against the norm in float64) has passed and `bench distill` has measured it. Where the kernels cannot be built,
/// the tensor ops take over with a warning.
/// </para>
/// </summary>
public static class FusedRmsNorm
{
    public const string EnvironmentVariable = "COMBADISTILL_FUSED_RMSNORM";
    const int Threads = 256, RowsPerLaunchBlock = Threads / 32;
    static readonly EmbeddedModule Kernels = new("kernels/rms_norm.cu", ["rms_norm_fwd", "rms_norm_bwd"]);

    public static bool Enabled => Runtime.EnvironmentSwitch.IsOn(EnvironmentVariable, whenUnset: false);

    /// <summary>Whether the kernels take this call: bf16 rows on CUDA, 16-byte aligned, D a multiple of 8, a bf16 weight (D) on the same device.</summary>
    public static bool Takes(Tensor x, Tensor weight)
    {
        if (x.device_type != DeviceType.CUDA || x.dtype != ScalarType.BFloat16 || x.dim() < 1 || x.numel() == 0) return false;
        var d = x.shape[^1];
        // the backward sums the weight gradient of a block in D floats of shared memory: at most 48 KB without opting in
        return d % 8 == 0 && d * sizeof(float) <= 48 * 1024 && x.numel() / d <= int.MaxValue
               && weight.dtype == ScalarType.BFloat16 && weight.dim() == 1 && weight.shape[0] == d
               && weight.device_type == DeviceType.CUDA && weight.device_index == x.device_index && weight.is_contiguous()
               && (!x.is_contiguous() || (long)TensorMemory.DataPointer(x) % 16 == 0)
               && (long)TensorMemory.DataPointer(weight) % 16 == 0;
    }

    /// <summary>Enabled, <see cref="Takes"/> the call, and built for the device (a failure warns once, then the tensor ops run).</summary>
    public static bool Use(Tensor x, Tensor weight) =>
        Enabled && Takes(x, weight) && Kernels.TryFor(x.device, "the fused RMSNorm kernels", "tensor ops normalise instead") is not null;

    /// <summary>weight · bf16(x / rms(x)) in bf16, differentiable in x and the weight where they take gradients.</summary>
    public static Tensor Forward(Tensor x, Tensor weight, double eps)
    {
        if (!Takes(x, weight)) throw new ArgumentException("FusedRmsNorm takes bf16 CUDA rows whose width is a multiple of 8, 16-byte aligned, and a bf16 weight of that width on the same device");
        x = x.contiguous();
        if ((long)TensorMemory.DataPointer(x) % 16 != 0) x = x.clone();
        if (!is_grad_enabled() || (!x.requires_grad && !weight.requires_grad))
            return Normalise(x, weight, eps, rstd: null);
        return Function.apply(x, weight, eps)[0];
    }

    static Tensor Normalise(Tensor x, Tensor weight, double eps, Tensor? rstd)
    {
        var d = (int)x.shape[^1];
        var rows = (int)(x.numel() / d);
        var y = empty_like(x);
        Kernels.For(x.device).Kernel("rms_norm_fwd").Launch(((rows + RowsPerLaunchBlock - 1) / RowsPerLaunchBlock, 1, 1), (Threads, 1, 1), 0,
            x, weight, y, (object?)rstd ?? IntPtr.Zero, d, rows, (float)eps);
        return y;
    }

    sealed class Function : autograd.MultiTensorFunction<Function>
    {
        public override string Name => "FusedRmsNorm";

        public override List<Tensor> forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var (x, weight, eps) = ((Tensor)vars[0], (Tensor)vars[1], (double)vars[2]);
            var rstd = empty([x.numel() / x.shape[^1]], ScalarType.Float32, x.device);
            var y = Normalise(x, weight, eps, rstd);
            ctx.save_for_backward([x, weight, rstd]);
            ctx.save_data("weightGradient", weight.requires_grad);
            return [y];
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, List<Tensor> grads) =>
            GradientHandoff.Guard(Name, () => Backward(ctx, grads));

        static List<Tensor> Backward(autograd.AutogradContext ctx, List<Tensor> grads)
        {
            var saved = ctx.get_saved_variables();
            var (x, weight, rstd) = (saved[0], saved[1], saved[2]);
            var wantWeight = (bool)ctx.get_data("weightGradient");
            var d = (int)x.shape[^1];
            var rows = (int)(x.numel() / d);
            var device = CudaDevice.For(x.device);
            Tensor dx;
            Tensor? dw = null;
            using (var scope = NewDisposeScope())
            {
                var dy = grads[0].to(ScalarType.BFloat16).contiguous();
                if ((long)TensorMemory.DataPointer(dy) % 16 != 0) dy = dy.clone();   // a view at an odd offset: the kernel loads 16 bytes at a time
                dx = empty_like(x);
                var dw32 = wantWeight ? zeros([d], ScalarType.Float32, x.device) : null;
                // about two blocks an SM, each a run of rows, so that few blocks add their weight-gradient sums into dw
                var blocks = Math.Max(1, Math.Min((rows + RowsPerLaunchBlock - 1) / RowsPerLaunchBlock, 2 * device.MultiprocessorCount));
                var perBlock = (rows + blocks - 1) / blocks;
                blocks = (rows + perBlock - 1) / perBlock;
                Kernels.For(device).Kernel("rms_norm_bwd").Launch((blocks, 1, 1), (Threads, 1, 1), wantWeight ? d * sizeof(float) : 0,
                    x, weight, dy, rstd, dx, (object?)dw32 ?? IntPtr.Zero, d, rows, perBlock);
                dx.MoveToOuterDisposeScope();
                dw = dw32?.to(weight.dtype).MoveToOuterDisposeScope();
            }
            foreach (var t in saved.Concat(grads)) t?.Dispose();   // the wrappers only: libtorch keeps its own references
            return GradientHandoff.Return(dx, dw, null);
        }
    }
}
