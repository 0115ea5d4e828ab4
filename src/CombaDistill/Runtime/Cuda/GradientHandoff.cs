using static TorchSharp.torch;

namespace CombaDistill.Runtime.Cuda;

/// <summary>
/// Returns a custom autograd function's gradients to libtorch without leaking them. TorchSharp 0.107 hands
/// <c>backward</c>'s result to libtorch as Tensor wrappers; libtorch copies each at::Tensor reference as soon as
/// <c>backward</c> returns, but the managed wrapper keeps its own reference to the memory until it is disposed,
/// and nothing disposes it: on a CUDA graph <c>backward</c> runs on libtorch's device thread, where no dispose
/// scope exists, and the GC, which cannot see GPU memory, would finalize it whenever. So every gradient tensor of
/// every layer would stay allocated long after autograd is done with it.
/// <para>
/// <see cref="Return"/> detaches the gradients from any scope and remembers them; the next <see cref="Return"/>
/// on the same thread disposes them. By then the earlier call has certainly returned to libtorch (one thread runs
/// one backward at a time, and a nested one returns before the outer one goes on), so libtorch holds its own
/// references. At most one call's gradients per autograd thread outlive their use.
/// </para>
/// </summary>
public static class GradientHandoff
{
    // Per thread by design: a list shared between threads could dispose a wrapper that another thread's
    // backward has built but not yet handed over.
    [ThreadStatic] static List<Tensor>? handedOver;

    /// <summary>
    /// Use as <c>return GradientHandoff.Return(dq, dk, null, …)</c>: one entry per argument of forward, null where
    /// the argument is not a tensor, was a null tensor, or gets no gradient.
    /// </summary>
    public static List<Tensor> Return(params Tensor?[] gradients)
    {
        ReleasePrevious();
        var kept = handedOver ??= [];
        foreach (var g in gradients.OfType<Tensor>())
        {
            if (kept.Any(k => ReferenceEquals(k, g))) continue;   // (Tensor.Equals compares values)
            g.DetachFromDisposeScope();
            kept.Add(g);
        }
        return gradients.Select(g => g!).ToList();   // TorchSharp types the list non-null, yet null is how "no gradient" is said
    }

    /// <summary>
    /// Runs a backward body. An exception escaping <c>backward</c> has to cross libtorch's native autograd engine,
    /// which .NET cannot unwind: on the development machine the process hung (idle, forever) instead of failing. So
    /// an exception here ends the process at once through <see cref="Environment.FailFast(string, Exception)"/>,
    /// with the function's name and the message on standard error (exit code 134). Check everything that can be
    /// checked in forward, where exceptions propagate normally.
    /// </summary>
    public static List<Tensor> Guard(string function, Func<List<Tensor>> backward)
    {
        try
        {
            return backward();
        }
        catch (Exception e)
        {
            Environment.FailFast($"{function}: backward failed and cannot report it through libtorch's autograd engine: {e.Message}", e);
            throw;   // not reached
        }
    }

    /// <summary>The wrappers this thread handed over last and has not released yet (a diagnostic; tests read it).</summary>
    public static IReadOnlyList<Tensor> HeldOnThisThread => handedOver?.ToList() ?? [];

    /// <summary>Disposes the wrappers this thread handed over before (done by <see cref="Return"/>; public for tests and for the end of a run).</summary>
    public static void ReleasePrevious()
    {
        if (handedOver is not { Count: > 0 } list) return;
        foreach (var t in list) t.Dispose();
        list.Clear();
    }
}
