using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CombaDistill.Distillation;

/// <summary>The student's arithmetic while a stage trains.</summary>
public enum Precision
{
    /// <summary>bf16 on CUDA, float32 on the CPU (where bf16 matrix products are slow).</summary>
    Auto,
    /// <summary>
    /// The student computes in bf16 (its matrix products, attention and the Comba op) and keeps float32 master
    /// weights and float32 AdamW moments (<see cref="MixedPrecision"/>). On CUDA the float32 products that remain
    /// (the loss heads' upcasts aside) may use TF32.
    /// </summary>
    BFloat16,
    /// <summary>Everything float32, TF32 off: the reference arithmetic.</summary>
    Float32,
}

public static class PrecisionChoice
{
    /// <summary>What <see cref="Precision.Auto"/> means on <paramref name="device"/>.</summary>
    public static Precision Resolve(Precision precision, Device device) => precision switch
    {
        Precision.Auto => device.type == DeviceType.CUDA ? Precision.BFloat16 : Precision.Float32,
        var other => other,
    };

    /// <summary>The recipe's spelling of a precision.</summary>
    public static string NameOf(Precision precision) => RecipeLoader.Precisions.First(p => p.Value == precision).Key;

    /// <summary>
    /// TF32 for float32 matrix products on CUDA: on under bf16 training (what float32 products remain there are
    /// upcasts for accuracy that tolerate TF32's 10-bit mantissa), off under float32, which is the reference. The
    /// setting is process-wide; disposing the result puts the previous one back.
    /// </summary>
    public static IDisposable MatmulMode(Precision resolved, Device device)
    {
        if (device.type != DeviceType.CUDA) return new Restore(() => { });
        var before = backends.cuda.matmul.allow_tf32;
        backends.cuda.matmul.allow_tf32 = resolved == Precision.BFloat16;
        return new Restore(() => backends.cuda.matmul.allow_tf32 = before);
    }

    sealed class Restore(Action undo) : IDisposable
    {
        public void Dispose() => undo();
    }
}

/// <summary>
/// Mixed-precision training with float32 master weights. <see cref="Begin"/> keeps a float32 copy of every
/// parameter of the student, then turns the student's own parameters into bf16 working copies, so every forward
/// and backward runs in bf16 with no per-step casts of the weights. The optimizer steps the masters
/// (<see cref="Masters"/>): after each micro-batch's backward <see cref="AccumulateGradients"/> adds the bf16
/// gradients into the masters' float32 gradients (accumulating across micro-batches in bf16 would round away small
/// contributions), and after each optimizer step <see cref="Publish"/> rounds the masters into the working copies.
/// <see cref="End"/> turns the student back into float32 with the masters' values, so what is saved has lost
/// nothing to bf16: frozen weights come back bit for bit, trained ones as their masters.
/// <para>
/// Parameters the stage trains that are not the student's own (LoRA adapters, which stay float32 and compute in
/// float32) are their own masters.
/// </para>
/// </summary>
public sealed class MixedPrecision : IDisposable
{
    readonly nn.Module student;
    readonly List<(string Name, Parameter Master)> masters = [];
    /// <summary>The masters this class made, by name: those of the student's own parameters that the stage trains.</summary>
    readonly Dictionary<string, Parameter> ownMasters = [];
    readonly Dictionary<string, Tensor> frozen = [];
    Dictionary<string, Parameter> working = [];
    bool ended;

    /// <summary>What the optimizer, clipping, gradient averaging and checkpoints work on, in the stage's order and names.</summary>
    public IReadOnlyList<(string Name, Parameter Parameter)> Masters => masters;

    MixedPrecision(nn.Module student) => this.student = student;

    /// <param name="student">a float32 model</param>
    /// <param name="trainable">the stage's trainable parameters (the student's, by their state_dict names, and any others, e.g. adapters)</param>
    public static MixedPrecision Begin(nn.Module student, IReadOnlyList<(string Name, Parameter Parameter)> trainable, ScalarType compute = ScalarType.BFloat16)
    {
        var owned = student.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (name, p) in owned)
            if (p.dtype != ScalarType.Float32)
                throw new InvalidOperationException($"mixed precision needs a float32 student; {name} is {p.dtype}");
        var mixed = new MixedPrecision(student);
        using (no_grad())
        {
            foreach (var (name, p) in trainable)
            {
                if (owned.TryGetValue(name, out var own) && ReferenceEquals(own, p))
                {
                    using var value = p.detach();
                    var master = new Parameter(value.clone(), requires_grad: true);
                    mixed.masters.Add((name, master));
                    mixed.ownMasters[name] = master;
                }
                else mixed.masters.Add((name, p));   // not the student's: trains as it is
            }
            // frozen weights wait on the CPU: in an alignment stage they are most of the model
            foreach (var (name, p) in owned)
                if (!mixed.ownMasters.ContainsKey(name))
                {
                    using var value = p.detach();
                    mixed.frozen[name] = value.to(ScalarType.Float32, CPU, copy: true);
                }
        }
        student.to(compute);   // new Parameter objects (requires_grad kept): look them up again by name
        mixed.working = student.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        return mixed;
    }

    /// <summary>Adds the working copies' gradients into the masters' (float32) and clears the working ones. Call after every backward.</summary>
    public void AccumulateGradients()
    {
        using var scope = NewDisposeScope();
        foreach (var (name, master) in ownMasters)
        {
            var w = working[name];
            var g = w.grad;
            if (g is null || g.IsInvalid) continue;
            if (master.grad is { IsInvalid: false } mg) mg.add_(g);
            else master.grad = g.to(ScalarType.Float32);   // the gradient slot holds its own reference
            w.grad = null;
        }
    }

    /// <summary>Each master with the working copy that <see cref="Publish"/> rounds it into (for an optimizer that writes them as it steps).</summary>
    public IEnumerable<(Parameter Master, Tensor Working)> WorkingCopies => ownMasters.Select(m => (m.Value, (Tensor)working[m.Key]));

    /// <summary>Rounds the masters into the student's working copies (after an optimizer step, a restore or a broadcast).</summary>
    public void Publish()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        foreach (var (name, master) in ownMasters) working[name].copy_(master);
    }

    /// <summary>Turns the student back into float32 holding the masters' values (and the frozen weights' originals).</summary>
    public void End()
    {
        if (ended) return;
        ended = true;
        student.to(ScalarType.Float32);
        var own = student.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        using var noGrad = no_grad();
        foreach (var (name, master) in ownMasters) own[name].copy_(master);
        foreach (var (name, value) in frozen) own[name].copy_(value);
        working = own;
    }

    /// <summary>Ends (the student back in float32) if <see cref="End"/> was not called, as when a stage stops early, then frees the masters.</summary>
    public void Dispose()
    {
        End();
        foreach (var master in ownMasters.Values) master.Dispose();
        foreach (var value in frozen.Values) value.Dispose();
        frozen.Clear();
    }
}
