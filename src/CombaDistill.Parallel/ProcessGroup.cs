using static TorchSharp.torch;

namespace CombaDistill.Runtime.Parallel;

public enum ReduceOp { Sum, Average }

/// <summary>A collective failed: a peer stopped, timed out, or called a different operation.</summary>
public sealed class ProcessGroupException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// The processes of one data-parallel job, ranks 0 … WorldSize − 1, and the collectives they make together. Every
/// rank calls the same collectives in the same order with tensors of the same size and dtype on <see cref="Device"/>;
/// each call works in place and returns once the result can be used by the next torch operation on that device.
/// Implementations: <see cref="NcclProcessGroup"/> (CUDA, one process per GPU), <see cref="TcpProcessGroup"/> (CPU
/// processes over loopback sockets), and <see cref="Single"/> (one process: every collective is the identity).
/// </summary>
public abstract class ProcessGroup : IDisposable
{
    public abstract int Rank { get; }
    public abstract int WorldSize { get; }

    /// <summary>Where the tensors of collectives must live.</summary>
    public abstract Device Device { get; }

    /// <summary>Reduces <paramref name="tensor"/> over all ranks into every rank's copy; with Average the sum is divided by the world size.</summary>
    public abstract void AllReduce(Tensor tensor, ReduceOp op);

    /// <summary>Copies rank <paramref name="root"/>'s <paramref name="tensor"/> into every other rank's.</summary>
    public abstract void Broadcast(Tensor tensor, int root);

    public virtual void Dispose() => GC.SuppressFinalize(this);

    /// <summary>Releases the group after a failure, without waiting for peers that may never answer.</summary>
    public virtual void Abort() => Dispose();

    public bool IsSingle => WorldSize == 1;

    /// <summary>A one-process group: Rank 0 of 1, nothing to exchange.</summary>
    public static ProcessGroup Single { get; } = new SingleProcess();

    /// <summary>Reduces a few numbers (losses, counts) in float64.</summary>
    public double[] AllReduce(double[] values, ReduceOp op)
    {
        if (IsSingle) return values;
        using var scope = NewDisposeScope();
        var t = tensor(values, ScalarType.Float64).to(Device);
        AllReduce(t, op);
        return t.cpu().data<double>().ToArray();
    }

    /// <summary>True on every rank when it is true on any: how ranks agree to stop at the same step.</summary>
    public bool Any(bool flag) => IsSingle ? flag : AllReduce([flag ? 1.0 : 0.0], ReduceOp.Sum)[0] > 0;

    /// <summary>Returns on each rank once every rank has called it.</summary>
    public void Barrier() => Any(false);

    sealed class SingleProcess : ProcessGroup
    {
        public override int Rank => 0;
        public override int WorldSize => 1;
        public override Device Device => CPU;
        public override void AllReduce(Tensor tensor, ReduceOp op) { }
        public override void Broadcast(Tensor tensor, int root) { }
        public override void Dispose() { }
    }
}
