using CombaDistill.Runtime.Cuda;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CombaDistill.Distillation;

/// <summary>
/// TorchSharp's AdamW with its step done by one kernel per parameter on CUDA (kernels/adamw.cu). TorchSharp's step
/// is nine tensor ops a parameter, about 90 bytes of memory traffic an element; the kernel reads p, g, m and v and
/// writes p, m and v once, 28 bytes. At the Llama-3.2-1B shape (1.24 billion trained parameters in the KL stage)
/// that is the difference between about 110 GB and 35 GB of traffic each step. The arithmetic is the same, in the
/// same order, in float32, but not bit for bit: the compiler fuses some multiplies and adds that TorchSharp's ops round
/// separately, and PyTorch divides by the scalar √bc₂ as a multiplication by its reciprocal, so a step may differ by a
/// few units in the last place (the GPU test holds the two within 1e-6 relative over six steps). A run that switches
/// between the two (the environment variable, a resume on a machine where the kernel cannot build) follows the same
/// trajectory only to that precision. The moments live in the base class's state, so a checkpoint's optimizer file
/// is TorchSharp's own format; <see cref="OptimizerStateFile"/> writes and reads it under TorchSharp's AdamW's name,
/// which makes it interchangeable with the unfused optimizer's (TorchSharp's own save_state_dict would write this
/// class's name, which its AdamW refuses).
/// <para>
/// The base class's step runs instead on the CPU, for anything but contiguous float32 CUDA parameters and
/// gradients, with amsgrad or maximize, before the base class has made a parameter's state, and whenever
/// <see cref="EnvironmentVariable"/> is 0, false, off or no.
/// </para>
/// </summary>
public sealed class FusedAdamW(IEnumerable<AdamW.ParamGroup> groups, double learningRate, double beta1, double beta2, double epsilon)
    : AdamW(groups, learningRate, beta1, beta2, epsilon, weight_decay: 0, amsgrad: false, maximize: false)
{
    public const string EnvironmentVariable = "COMBADISTILL_FUSED_ADAMW";
    const int Threads = 256;
    static readonly EmbeddedModule Kernels = new("kernels/adamw.cu", ["adamw_step", "adamw_step_v4"]);

    /// <summary>Whether the fused kernel may run at all (the environment variable; default on).</summary>
    public static bool Enabled => Runtime.EnvironmentSwitch.IsOn(EnvironmentVariable, whenUnset: true);

    /// <summary>How many steps the kernel took (the rest were the base class's): for tests and notes.</summary>
    public long FusedSteps { get; private set; }

    /// <summary>
    /// Multiplies these parameters' gradients by <paramref name="scale"/> in the next step, before the update (the
    /// gradient clip's factor). The kernel folds it into its one pass; the base class's step gets gradients scaled
    /// in place first, as a clip would have left them. Forgotten at the next <see cref="zero_grad"/> and after a step.
    /// </summary>
    public void ScaleGradients(IEnumerable<Parameter> parameters, double scale)
    {
        foreach (var parameter in parameters) gradientScales[parameter.Handle] = scale;
    }

    /// <summary>
    /// Bf16 working copies of the parameters (mixed precision: the student computes with them): the kernel writes
    /// each updated parameter rounded into its copy (<see cref="PublishedLastStep"/>).
    /// </summary>
    public void SetWorkingCopies(IEnumerable<(Parameter Parameter, Tensor Working)> copies)
    {
        workingCopies.Clear();
        foreach (var (parameter, working) in copies) workingCopies[parameter.Handle] = working;
    }

    /// <summary>Whether the last step wrote every updated parameter's working copy (only the kernel does).</summary>
    public bool PublishedLastStep { get; private set; }

    readonly Dictionary<IntPtr, double> gradientScales = [];
    readonly Dictionary<IntPtr, Tensor> workingCopies = [];

    public override void zero_grad()
    {
        gradientScales.Clear();
        base.zero_grad();
    }

    public override Tensor step(Func<Tensor>? closure = null)
    {
        PublishedLastStep = false;
        try
        {
            if (closure is not null || !Enabled || Prepare() is not { } updates)
            {
                ApplyScalesInPlace();
                return base.step(closure!);
            }
            using var noGrad = no_grad();
            var published = true;
            foreach (var (o, parameter, grad, state, device) in updates)
            {
                var (lr, b1, b2, eps, wd) = (o.LearningRate!.Value, o.beta1!.Value, o.beta2!.Value, o.eps!.Value, o.weight_decay!.Value);
                state.step += 1;
                var bc1 = 1 - Math.Pow(b1, state.step);
                var bc2 = 1 - Math.Pow(b2, state.step);
                var scale = gradientScales.TryGetValue(parameter.Handle, out var s) ? s : 1.0;
                var working = workingCopies.TryGetValue(parameter.Handle, out var w) && WritableCopy(w, parameter) ? w : null;
                published &= working is not null || !workingCopies.ContainsKey(parameter.Handle);
                Launch(device, parameter, grad, state, working, (float)scale, (float)(1 - lr * wd), (float)b1, (float)b2, (float)(1 - b1), (float)(1 - b2),
                    (float)(lr / bc1), (float)Math.Sqrt(bc2), (float)eps);
            }
            FusedSteps++;
            PublishedLastStep = published;
            return null!;
        }
        finally { gradientScales.Clear(); }
    }

    void ApplyScalesInPlace()
    {
        if (gradientScales.Count == 0) return;
        using var noGrad = no_grad();
        foreach (var group in _parameter_groups)
            foreach (var parameter in group.Parameters)
                if (parameter.grad is { } grad && gradientScales.TryGetValue(parameter.Handle, out var scale))
                    grad.mul_(scale);
    }

    static bool WritableCopy(Tensor working, Parameter parameter) =>
        working.dtype == ScalarType.BFloat16 && working.is_contiguous() && working.numel() == parameter.numel() && SameDevice(working, parameter);

    readonly record struct Update(Options Options, Parameter Parameter, Tensor Grad, State State, CudaDevice Device);

    /// <summary>
    /// Every parameter with a gradient and what its update needs, in the base class's order, with the kernels
    /// compiled (or found cached) for their devices before any state changes; null if any of them is not for the
    /// kernel, or the kernel cannot be built (the base class then steps them all).
    /// </summary>
    List<Update>? Prepare()
    {
        var found = new List<(Options Options, Parameter Parameter, Tensor Grad, State State)>();
        foreach (var group in _parameter_groups)
        {
            var o = (Options)group.Options;
            if (o.amsgrad == true || o.maximize == true) return null;
            foreach (var parameter in group.Parameters)
            {
                if (parameter.grad is not { } grad) continue;
                if (!_state.TryGetValue(parameter.Handle, out var s) || s is not State state) return null;
                if (parameter.device_type != DeviceType.CUDA || parameter.dtype != ScalarType.Float32 || !parameter.is_contiguous()
                    || grad.dtype != ScalarType.Float32 || !SameDevice(grad, parameter) || !grad.is_contiguous()
                    || state.exp_avg is null || state.exp_avg_sq is null || !state.exp_avg.is_contiguous() || !state.exp_avg_sq.is_contiguous()
                    || state.exp_avg.dtype != ScalarType.Float32 || state.exp_avg_sq.dtype != ScalarType.Float32
                    || !SameDevice(state.exp_avg, parameter) || !SameDevice(state.exp_avg_sq, parameter))
                    return null;
                found.Add((o, parameter, grad, state));
            }
        }
        foreach (var index in found.Select(f => f.Parameter.device_index).Distinct())
            if (Kernels.TryFor(found.First(f => f.Parameter.device_index == index).Parameter.device, "the fused AdamW kernel", "TorchSharp's AdamW steps instead") is null)
                return null;
        return found.Select(f => new Update(f.Options, f.Parameter, f.Grad, f.State, CudaDevice.For(f.Parameter.device))).ToList();
    }

    // (torch.Device is a class without value equality: compare what it names)
    static bool SameDevice(Tensor a, Tensor b) => a.device_type == b.device_type && a.device_index == b.device_index;

    static void Launch(CudaDevice device, Parameter p, Tensor g, State s, Tensor? working, params object[] scalars)
    {
        var module = Kernels.For(device);
        var n = p.numel();
        var aligned = n % 4 == 0 && new[] { p, g, s.exp_avg, s.exp_avg_sq }.All(t => TensorMemory.DataPointer(t) % 16 == 0)
            && (working is null || TensorMemory.DataPointer(working) % 8 == 0);
        var items = aligned ? n / 4 : n;
        var blocks = (int)Math.Min((items + Threads - 1) / Threads, 8L * device.MultiprocessorCount);
        if (blocks == 0) return;
        var w = working is null ? IntPtr.Zero : TensorMemory.DataPointer(working);
        module.Kernel(aligned ? "adamw_step_v4" : "adamw_step").Launch((blocks, 1, 1), (Threads, 1, 1), 0,
            [p, s.exp_avg, s.exp_avg_sq, g, w, items, .. scalars]);
    }
}
