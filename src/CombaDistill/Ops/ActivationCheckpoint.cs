using CombaDistill.Runtime.Cuda;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Ops;

/// <summary>
/// Activation checkpointing: <see cref="Run"/> computes f(x) without keeping f's intermediate activations, and the
/// backward pass computes f(x) again, with autograd on, to differentiate it. Memory for f's activations is traded for
/// one more forward of f. The parameters f uses get their gradients from that second forward's backward (autograd
/// runs it inside the outer backward), so f must compute the same function both times: nothing random, no state that
/// the first call changes.
/// <para>
/// A zero-dimensional tensor that requires a gradient rides along as a second input, so the outer graph calls the
/// backward even when x itself needs no gradient (an alignment stage's input, the teacher's hidden state, needs none;
/// the layer's parameters do).
/// </para>
/// </summary>
public static class ActivationCheckpoint
{
    /// <summary>f(x); under autograd, f's activations are recomputed in the backward instead of kept.</summary>
    public static Tensor Run(Func<Tensor, Tensor> f, Tensor x)
    {
        if (!is_grad_enabled()) return f(x);
        using var anchor = zeros([], x.dtype, x.device).requires_grad_(true);
        return CheckpointFunction.apply(x, anchor, f)[0];
    }

    sealed class CheckpointFunction : autograd.MultiTensorFunction<CheckpointFunction>
    {
        public override string Name => "ActivationCheckpoint";

        public override List<Tensor> forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var x = (Tensor)vars[0];
            var f = (Func<Tensor, Tensor>)vars[2];
            Tensor y;
            // f's intermediates go now: only y (and x, saved) outlive the call
            using (NewDisposeScope())
            using (no_grad())
                y = f(x).MoveToOuterDisposeScope();
            ctx.save_for_backward([x]);
            ctx.save_data("f", f);
            ctx.save_data("x_requires_grad", x.requires_grad);
            return [y];
        }

        // Guard: an exception must not cross libtorch's native frames (docs/custom-autograd.md)
        public override List<Tensor> backward(autograd.AutogradContext ctx, List<Tensor> grads) =>
            GradientHandoff.Guard(Name, () => Backward(ctx, grads));

        static List<Tensor> Backward(autograd.AutogradContext ctx, List<Tensor> grads)
        {
            var saved = ctx.get_saved_variables();
            var f = (Func<Tensor, Tensor>)ctx.get_data("f");
            var xRequiresGrad = (bool)ctx.get_data("x_requires_grad");
            Tensor? dx = null;
            using (var scope = NewDisposeScope())
            using (enable_grad())
            {
                var x = saved[0].detach().requires_grad_(xRequiresGrad);
                var y = f(x);
                // nothing in f to differentiate (a frozen layer on an input that needs no gradient): nothing to do
                if (y.requires_grad) autograd.backward([y], [grads[0]]);
                if (xRequiresGrad && x.grad is { } g) dx = g.MoveToOuterDisposeScope();
            }
            foreach (var t in saved.Concat(grads)) t?.Dispose();   // fresh wrappers on every call, ours to release
            return GradientHandoff.Return(dx, null, null);
        }
    }
}
