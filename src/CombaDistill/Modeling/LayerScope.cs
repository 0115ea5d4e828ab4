using static TorchSharp.torch;

namespace CombaDistill.Modeling;

/// <summary>
/// Runs one decoder layer in a dispose scope of its own and keeps only its output. A TorchSharp tensor lives until its
/// scope ends, not until its last use as in PyTorch, so without this every layer's temporaries (the MLP's
/// intermediate activations, the norms' float32 copies, the attention's projections) stayed alive until the whole
/// model's forward returned: under no_grad (a teacher) that is the sum of all layers' temporaries where one layer's
/// would do. With gradients, autograd keeps its own references to what the backward needs, so freeing the rest here
/// changes no result.
/// </summary>
public static class LayerScope
{
    public static Tensor Run(Func<Tensor> forward)
    {
        using var scope = NewDisposeScope();
        var output = forward();
        // only if this scope made it: a layer that handed back a tensor from outside must not pull it out of its own scope
        return scope.MoveToOuter(output);
    }
}
