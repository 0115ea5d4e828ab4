using CombaDistill.Runtime.Cuda;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Ops;

/// <summary>
/// A gated linear scan with a hand-written backward, kept as the worked example of a TorchSharp custom autograd
/// function (docs/custom-autograd.md): the pattern the fused Comba kernels are wrapped in. Per batch row,
/// <code>
///   h_t = e^{g_t} h_{t−1} + x_t,   y_t = s · h_t,   h_{−1} = h₀ (zeros when null)
/// </code>
/// with x (B, T, D), g (B, T), h₀ (B, D) or null, s a number; returns y (B, T, D) and the final state h_{T−1} (B, D).
/// Backward runs the adjoint recurrence from the end, λ_t = s·dy_t + e^{g_{t+1}} λ_{t+1} (λ_{T−1} also gets the
/// final state's gradient), giving dx_t = λ_t, dg_t = e^{g_t} ⟨λ_t, h_{t−1}⟩ and dh₀ = e^{g_0} λ_0.
/// </summary>
public static class DecayedScan
{
    public static (Tensor Output, Tensor FinalState) Forward(Tensor x, Tensor g, Tensor? initialState, double scale)
    {
        if (x.dim() != 3 || g.dim() != 2 || g.shape[0] != x.shape[0] || g.shape[1] != x.shape[1])
            throw new ArgumentException($"DecayedScan: x ({string.Join(", ", x.shape)}) must be (B, T, D) and g ({string.Join(", ", g.shape)}) (B, T)");
        if (initialState is not null && !initialState.shape.SequenceEqual([x.shape[0], x.shape[2]]))
            throw new ArgumentException($"DecayedScan: the initial state is ({string.Join(", ", initialState.shape)}); expected ({x.shape[0]}, {x.shape[2]})");
        // Every argument goes through apply, tensors and numbers alike, in a fixed order that backward's result mirrors.
        var outputs = Function.apply(x, g, initialState!, scale);
        return (outputs[0], outputs[1]);
    }

    /// <summary>The same computation in plain TorchSharp ops, differentiated by autograd (the test's reference).</summary>
    public static (Tensor Output, Tensor FinalState) Reference(Tensor x, Tensor g, Tensor? initialState, double scale)
    {
        var h = initialState ?? zeros([x.shape[0], x.shape[2]], dtype: x.dtype, device: x.device);
        var ys = new List<Tensor>();
        for (long t = 0; t < x.shape[1]; t++)
        {
            h = g.select(1, t).exp().unsqueeze(-1) * h + x.select(1, t);
            ys.Add(scale * h);
        }
        return (stack(ys, dim: 1), h);
    }

    sealed class Function : autograd.MultiTensorFunction<Function>
    {
        public override string Name => nameof(DecayedScan);

        // Runs under no_grad, on the caller's thread and inside the caller's dispose scope.
        public override List<Tensor> forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var (x, g, h0, scale) = ((Tensor)vars[0], (Tensor)vars[1], vars[2] as Tensor, (double)vars[3]);
            using var scope = NewDisposeScope();
            var h = h0 ?? zeros([x.shape[0], x.shape[2]], dtype: x.dtype, device: x.device);
            var states = new Tensor[x.shape[1]];
            var decay = g.exp();
            for (long t = 0; t < x.shape[1]; t++)
                states[t] = h = decay.select(1, t).unsqueeze(-1) * h + x.select(1, t);
            var hs = stack(states, dim: 1);
            var y = scale * hs;
            var final = hs.select(1, -1).contiguous();

            // Saved tensors are read after forward returns (libtorch's SavedVariable takes its reference then), so
            // they must outlive this scope: move them out with the outputs. A null entry (no initial state) is fine.
            ctx.save_for_backward([g, hs.MoveToOuterDisposeScope(), h0!]);
            ctx.save_data("scale", scale);       // numbers only: save_data prints a console warning for a Tensor
            return [y.MoveToOuterDisposeScope(), final.MoveToOuterDisposeScope()];
        }

        // Runs on libtorch's autograd thread for CUDA tensors (on the caller's for CPU ones), so the caller's dispose
        // scope may not exist here. Guard: an exception must not try to cross libtorch's native frames.
        public override List<Tensor> backward(autograd.AutogradContext ctx, List<Tensor> gradOutputs) =>
            GradientHandoff.Guard(Name, () => Backward(ctx, gradOutputs));

        static List<Tensor> Backward(autograd.AutogradContext ctx, List<Tensor> gradOutputs)
        {
            using var scope = NewDisposeScope();
            scope.Attach(gradOutputs);                // TorchSharp made these wrappers for us; ours to dispose
            var saved = ctx.get_saved_variables();    // fresh wrappers on every call, also ours
            scope.Attach(saved.Where(t => t is not null));
            var (g, hs, h0) = (saved[0], saved[1], saved[2]);
            var scale = (double)ctx.get_data("scale");
            var (dy, dFinal) = (gradOutputs[0], gradOutputs[1]);   // zeros when unused (materialize_grads is on by default)

            var decay = g.exp();
            var T = hs.shape[1];
            var previous = cat([(h0 ?? zeros_like(hs.select(1, 0))).unsqueeze(1), hs.narrow(1, 0, T - 1)], dim: 1);   // h_{t−1}
            var adjoints = new Tensor[T];
            var lambda = scale * dy.select(1, T - 1) + dFinal;
            for (long t = T - 1; ; t--)
            {
                adjoints[t] = lambda;
                if (t == 0) break;
                lambda = scale * dy.select(1, t - 1) + decay.select(1, t).unsqueeze(-1) * lambda;
            }
            var dx = stack(adjoints, dim: 1);
            var dg = decay * (dx * previous).sum(-1);
            var dh0 = h0 is null ? null : decay.select(1, 0).unsqueeze(-1) * adjoints[0];
            // One entry per forward argument: x, g, the initial state (null when none was given), the scale (a number).
            return GradientHandoff.Return(dx, dg, dh0, null);
        }
    }
}
