using CombaDistill.Runtime.Cuda;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Ops;

/// <summary>
/// The distillation loss over a chunk of bf16 logits in one CUDA kernel (kernels/logit_loss.cu): per row, the KL of
/// the teacher's softmax to the student's at temperature T and the cross-entropy at T = 1, and the loss's gradient
/// with respect to the student's logits in bf16, in two passes over the row (about 10 bytes an element against about
/// 80 for the same loss as tensor ops on float32 copies).
/// <para>
/// On by default for bf16 logits on CUDA (<see cref="EnvironmentVariable"/>=0 turns it off). Its GPU test,
/// FusedLogitLossTests, compares it with a float64 reference; on an H100 it took the 1B shape's kd step from 331 to
/// 300 ms, and 200 KL steps followed the tensor-op loss's curve (docs/benchmarks.md). Where the kernel cannot be
/// built or loaded, the tensor ops take over with a warning.
/// </para>
/// </summary>
public static class FusedLogitLoss
{
    public const string EnvironmentVariable = "COMBADISTILL_FUSED_LOGIT_LOSS";
    const int Threads = 256;
    static readonly EmbeddedModule Kernels = new("kernels/logit_loss.cu", ["logit_loss_rows"]);

    /// <summary>Whether the kernel may run at all (the environment variable; default on).</summary>
    public static bool Enabled => Runtime.EnvironmentSwitch.IsOn(EnvironmentVariable, whenUnset: true);

    /// <summary>
    /// Whether to use the kernel for these logits: enabled, <see cref="Takes"/> them, and built (or found cached)
    /// for their device; a build or load failure warns once and answers false from then on.
    /// </summary>
    public static bool Use(Tensor studentLogits, Tensor? teacherLogits) =>
        Enabled && Takes(studentLogits, teacherLogits)
        && Kernels.TryFor(studentLogits.device, "the fused logit-loss kernel", "tensor ops compute the loss instead") is not null;

    /// <summary>Whether the kernel takes these logits: bf16 and contiguous on CUDA, the teacher's (if any) shaped like the student's.</summary>
    public static bool Takes(Tensor studentLogits, Tensor? teacherLogits) =>
        studentLogits.device_type == DeviceType.CUDA && studentLogits.dtype == ScalarType.BFloat16 && studentLogits.is_contiguous()
        && studentLogits.shape[^1] <= int.MaxValue
        && (teacherLogits is null || (teacherLogits.dtype == ScalarType.BFloat16 && teacherLogits.is_contiguous()
            && teacherLogits.shape.SequenceEqual(studentLogits.shape) && teacherLogits.device_index == studentLogits.device_index));

    /// <summary>
    /// Each row's KL and cross-entropy (float32, (rows)), and with <paramref name="gradient"/> the loss's gradient with
    /// respect to <paramref name="studentLogits"/> (bf16, its shape): klScale · (p_S − p_T) at temperature T plus
    /// ceScale · (softmax(z_S) − onehot(target)).
    /// </summary>
    /// <param name="studentLogits">(…, V) bf16</param>
    /// <param name="teacherLogits">(…, V) bf16; null without KL</param>
    /// <param name="targets">(…) token ids; null without cross-entropy</param>
    public static (Tensor? Gradient, Tensor? KlRows, Tensor? CeRows) Rows(Tensor studentLogits, Tensor? teacherLogits, Tensor? targets,
        double temperature, double klScale, double ceScale, bool gradient)
    {
        if (!Takes(studentLogits, teacherLogits)) throw new ArgumentException("FusedLogitLoss takes contiguous bf16 CUDA logits (the teacher's shaped like the student's)");
        var vocab = (int)studentLogits.shape[^1];
        var rows = studentLogits.numel() / vocab;
        var device = studentLogits.device;
        var useKl = teacherLogits is not null;
        var useCe = targets is not null;
        var index = targets?.to(ScalarType.Int64).contiguous();
        if (index is not null && index.numel() != rows) throw new ArgumentException($"{index.numel()} targets for {rows} rows of logits");
        var klRows = useKl ? zeros([rows], ScalarType.Float32, device) : null;
        var ceRows = useCe ? zeros([rows], ScalarType.Float32, device) : null;
        var grad = gradient ? empty_like(studentLogits) : null;
        if (rows == 0) return (grad, klRows, ceRows);
        Kernels.For(device).Kernel("logit_loss_rows").Launch(((int)rows, 1, 1), (Threads, 1, 1), 0,
            studentLogits, (object?)teacherLogits ?? IntPtr.Zero, (object?)index ?? IntPtr.Zero, (object?)grad ?? IntPtr.Zero,
            (object?)klRows ?? IntPtr.Zero, (object?)ceRows ?? IntPtr.Zero, vocab, (float)(1 / temperature), (float)klScale, (float)ceScale,
            useKl ? 1 : 0, useCe ? 1 : 0);
        return (grad, klRows, ceRows);
    }
}
