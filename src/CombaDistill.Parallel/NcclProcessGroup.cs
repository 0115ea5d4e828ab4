using static TorchSharp.torch;

namespace CombaDistill.Runtime.Parallel;

/// <summary>
/// One NCCL communicator over one GPU per rank. Collectives work in place on the tensors' device memory and are
/// enqueued on the legacy default stream, the one TorchSharp's operations use, so they follow the operations that
/// produced their input and precede those that read their output without any host synchronisation. NCCL never times
/// out on its own: a rank that dies leaves the others waiting, so the launcher (<see cref="WorkerLauncher"/>) ends
/// them all when one exits.
/// </summary>
public sealed class NcclProcessGroup : ProcessGroup
{
    const string UniqueIdFile = "nccl-unique-id";

    readonly int rank, worldSize;
    readonly Device device;
    IntPtr comm;

    NcclProcessGroup(int rank, int worldSize, Device device, IntPtr comm)
    {
        this.rank = rank;
        this.worldSize = worldSize;
        this.device = device;
        this.comm = comm;
    }

    public override int Rank => rank;
    public override int WorldSize => worldSize;
    public override Device Device => device;

    /// <summary>
    /// Rank 0 makes NCCL's unique id and publishes it in the rendezvous folder; every rank then joins the communicator
    /// on <paramref name="device"/>, which returns once all <paramref name="worldSize"/> ranks have joined.
    /// </summary>
    public static NcclProcessGroup Create(int rank, int worldSize, Device device, Rendezvous rendezvous)
    {
        if (worldSize < 1 || rank < 0 || rank >= worldSize) throw new ArgumentOutOfRangeException(nameof(rank), $"rank {rank} of {worldSize}");
        if (device.type != TorchSharp.DeviceType.CUDA) throw new ArgumentException($"NCCL needs a CUDA device, not {device}");
        NcclLibrary.ApplySafeDefaults();
        var index = Math.Max(0, device.index);
        NcclLibrary.SetDevice(index);
        NcclLibrary.UniqueId id;
        if (rank == 0)
        {
            id = NcclLibrary.NewUniqueId();
            rendezvous.Publish(UniqueIdFile, ToBytes(id));
        }
        else
        {
            id = FromBytes(rendezvous.Await(UniqueIdFile, rank));
        }
        var comm = NcclLibrary.CommInitRank(worldSize, id, rank);
        return new NcclProcessGroup(rank, worldSize, new Device(TorchSharp.DeviceType.CUDA, index), comm);
    }

    /// <summary>Several ranks in one process, one thread each (NCCL allows it): for tests on one multi-GPU machine.</summary>
    public static NcclProcessGroup[] CreateInThreads(IReadOnlyList<Device> devices, string rendezvousFolder, TimeSpan timeout)
    {
        var rendezvous = new Rendezvous(rendezvousFolder, timeout);
        var tasks = devices.Select((d, r) => Task.Factory.StartNew(() => Create(r, devices.Count, d, rendezvous), TaskCreationOptions.LongRunning)).ToArray();
        Task.WaitAll(tasks);
        return tasks.Select(t => t.Result).ToArray();
    }

    public override void AllReduce(Tensor tensor, ReduceOp op)
    {
        Check(tensor);
        NcclLibrary.SetDevice(device.index);
        NcclLibrary.AllReduce(TensorMemory.Pointer(tensor), tensor.numel(), NcclLibrary.TypeOf(tensor.dtype), op == ReduceOp.Average ? NcclLibrary.RedOp.Avg : NcclLibrary.RedOp.Sum, comm);
    }

    public override void Broadcast(Tensor tensor, int root)
    {
        if (root < 0 || root >= worldSize) throw new ArgumentOutOfRangeException(nameof(root), $"rank {root} of {worldSize}");
        Check(tensor);
        NcclLibrary.SetDevice(device.index);
        NcclLibrary.Broadcast(TensorMemory.Pointer(tensor), tensor.numel(), NcclLibrary.TypeOf(tensor.dtype), root, comm);
    }

    /// <summary>Waits for this rank's work, then frees the communicator (after a failure, <see cref="Abort"/> instead: this may wait on a dead peer).</summary>
    public override void Dispose()
    {
        if (comm != IntPtr.Zero)
        {
            NcclLibrary.SetDevice(device.index);
            NcclLibrary.CommDestroy(comm);
            comm = IntPtr.Zero;
        }
        base.Dispose();
    }

    /// <summary>Frees the communicator and stops its operations still on the device, without waiting for peers.</summary>
    public override void Abort()
    {
        if (comm != IntPtr.Zero)
        {
            NcclLibrary.CommAbort(comm);
            comm = IntPtr.Zero;
        }
        base.Dispose();
    }

    void Check(Tensor tensor)
    {
        ObjectDisposedException.ThrowIf(comm == IntPtr.Zero, this);
        if (tensor.device_type != TorchSharp.DeviceType.CUDA || tensor.device_index != device.index)
            throw new ArgumentException($"rank {rank}'s NCCL communicator works on {device}; the tensor is on {tensor.device}");
    }

    static unsafe byte[] ToBytes(NcclLibrary.UniqueId id) => new ReadOnlySpan<byte>(id.Internal, NcclLibrary.UniqueId.Size).ToArray();

    static unsafe NcclLibrary.UniqueId FromBytes(byte[] bytes)
    {
        if (bytes.Length != NcclLibrary.UniqueId.Size) throw new ProcessGroupException($"the published NCCL id has {bytes.Length} bytes, not {NcclLibrary.UniqueId.Size}");
        var id = new NcclLibrary.UniqueId();
        bytes.CopyTo(new Span<byte>(id.Internal, NcclLibrary.UniqueId.Size));
        return id;
    }
}
