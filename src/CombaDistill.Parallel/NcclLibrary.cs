using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace CombaDistill.Runtime.Parallel;

/// <summary>
/// NCCL, and the one CUDA-runtime call it needs (choosing the calling thread's device), bound by P/Invoke to the
/// libraries PyTorch already loaded: libtorch_cuda links libnccl.so.2, which a pip PyTorch keeps in
/// <c>site-packages/nvidia/nccl/lib</c> beside <c>site-packages/torch/lib</c> (<c>COMBADISTILL_LIBTORCH</c>);
/// <c>COMBADISTILL_NCCL</c> names another <c>libnccl.so.2</c>. Using libtorch_cuda's copy keeps one NCCL in the process.
/// </summary>
public static unsafe class NcclLibrary
{
    public const string EnvironmentVariable = "COMBADISTILL_NCCL";

    /// <summary>
    /// NVLink SHARP (multicast) stays off unless the environment says otherwise: on shared machines a job using it
    /// can take the host's GPUs out of service, and data parallelism over a few GPUs gains little from it.
    /// </summary>
    public static readonly IReadOnlyDictionary<string, string> SafeDefaults = new Dictionary<string, string>
    {
        ["NCCL_NVLS_ENABLE"] = "0",
        ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1",
        ["NVSHMEM_DISABLE_NVLS"] = "1",
    };

    /// <summary>ncclUniqueId: rank 0 makes it, every rank passes it to ncclCommInitRank.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct UniqueId
    {
        public const int Size = 128;
        public fixed byte Internal[Size];
    }

    public enum DataType { Int32 = 2, Int64 = 4, Float16 = 6, Float32 = 7, Float64 = 8, BFloat16 = 9 }
    public enum RedOp { Sum = 0, Avg = 4 }

    sealed class Exports
    {
        public required string Path { get; init; }
        public required delegate* unmanaged<int*, int> GetVersion { get; init; }
        public required delegate* unmanaged<UniqueId*, int> GetUniqueId { get; init; }
        public required delegate* unmanaged<IntPtr*, int, UniqueId, int, int> CommInitRank { get; init; }
        public required delegate* unmanaged<IntPtr, IntPtr, nuint, int, int, IntPtr, IntPtr, int> AllReduce { get; init; }
        public required delegate* unmanaged<IntPtr, IntPtr, nuint, int, int, IntPtr, IntPtr, int> Broadcast { get; init; }
        public required delegate* unmanaged<IntPtr, int> CommDestroy { get; init; }
        public required delegate* unmanaged<IntPtr, int> CommAbort { get; init; }
        public required delegate* unmanaged<IntPtr, int*, int> CommGetAsyncError { get; init; }
        public required delegate* unmanaged<int, byte*> GetErrorString { get; init; }
        public required delegate* unmanaged<int, int> CudaSetDevice { get; init; }
        public required delegate* unmanaged<int, byte*> CudaGetErrorString { get; init; }
    }

    static readonly Lazy<Exports> Native = new(Bind);

    /// <summary>The libnccl.so.2 in use.</summary>
    public static string Path => Native.Value.Path;

    /// <summary>NCCL's version code, e.g. 22703 for 2.27.3.</summary>
    public static int Version
    {
        get
        {
            int version;
            Check(Native.Value.GetVersion(&version), "ncclGetVersion");
            return version;
        }
    }

    public static string VersionText => Version is var v && v >= 10000 ? $"{v / 10000}.{v / 100 % 100}.{v % 100}" : $"{v / 1000}.{v / 100 % 10}.{v % 100}";

    /// <summary>Sets the variables of <see cref="SafeDefaults"/> in this process's native environment where they are unset (NCCL reads them with getenv).</summary>
    public static void ApplySafeDefaults()
    {
        foreach (var (name, value) in SafeDefaults)
            if (setenv(name, value, overwrite: 0) != 0) throw new NativeRuntimeException($"cannot set {name} in the process environment");
    }

    public static UniqueId NewUniqueId()
    {
        UniqueId id;
        Check(Native.Value.GetUniqueId(&id), "ncclGetUniqueId");
        return id;
    }

    public static IntPtr CommInitRank(int worldSize, UniqueId id, int rank)
    {
        IntPtr comm;
        Check(Native.Value.CommInitRank(&comm, worldSize, id, rank), $"ncclCommInitRank (rank {rank} of {worldSize})");
        return comm;
    }

    /// <summary>In place on the legacy default stream (stream 0), where TorchSharp's operations run, so it is ordered with them.</summary>
    public static void AllReduce(IntPtr buffer, long count, DataType type, RedOp op, IntPtr comm) =>
        CheckAsync(Native.Value.AllReduce(buffer, buffer, (nuint)count, (int)type, (int)op, comm, IntPtr.Zero), comm, "ncclAllReduce");

    public static void Broadcast(IntPtr buffer, long count, DataType type, int root, IntPtr comm) =>
        CheckAsync(Native.Value.Broadcast(buffer, buffer, (nuint)count, (int)type, root, comm, IntPtr.Zero), comm, "ncclBroadcast");

    public static void CommDestroy(IntPtr comm) => Native.Value.CommDestroy(comm);

    /// <summary>Frees a communicator without waiting for peers, stopping any operation still running on the device.</summary>
    public static void CommAbort(IntPtr comm) => Native.Value.CommAbort(comm);

    /// <summary>Makes <paramref name="device"/> the calling thread's CUDA device: NCCL binds a communicator to it, and stream 0 means its stream.</summary>
    public static void SetDevice(int device)
    {
        var error = Native.Value.CudaSetDevice(device);
        if (error != 0) throw new ProcessGroupException($"cudaSetDevice({device}) failed: {Marshal.PtrToStringUTF8((IntPtr)Native.Value.CudaGetErrorString(error))}");
    }

    public static DataType TypeOf(ScalarType type) => type switch
    {
        ScalarType.Float32 => DataType.Float32,
        ScalarType.Float64 => DataType.Float64,
        ScalarType.BFloat16 => DataType.BFloat16,
        ScalarType.Float16 => DataType.Float16,
        ScalarType.Int64 => DataType.Int64,
        ScalarType.Int32 => DataType.Int32,
        _ => throw new ArgumentException($"NCCL does not reduce {type} tensors"),
    };

    static void Check(int result, string call)
    {
        if (result != 0) throw new ProcessGroupException($"{call} failed: {ErrorText(result)}");
    }

    /// <summary>A call's own result, then any error a peer or the network raised on the communicator meanwhile.</summary>
    static void CheckAsync(int result, IntPtr comm, string call)
    {
        Check(result, call);
        int asyncError;
        Check(Native.Value.CommGetAsyncError(comm, &asyncError), "ncclCommGetAsyncError");
        if (asyncError != 0 && asyncError != InProgress) throw new ProcessGroupException($"{call}: the communicator failed: {ErrorText(asyncError)}");
    }

    const int InProgress = 7;

    static string ErrorText(int result) => $"{Marshal.PtrToStringUTF8((IntPtr)Native.Value.GetErrorString(result))} (ncclResult {result})";

    static Exports Bind()
    {
        TorchRuntime.Initialize();
        var (nccl, path) = LoadNccl();
        var cudart = LoadCudaRuntime();
        IntPtr Export(IntPtr library, string name, string file) =>
            NativeLibrary.TryGetExport(library, name, out var f) ? f : throw new NativeRuntimeException($"{file} has no {name}; NCCL 2.12 or newer is needed");
        return new Exports
        {
            Path = path,
            GetVersion = (delegate* unmanaged<int*, int>)Export(nccl, "ncclGetVersion", path),
            GetUniqueId = (delegate* unmanaged<UniqueId*, int>)Export(nccl, "ncclGetUniqueId", path),
            CommInitRank = (delegate* unmanaged<IntPtr*, int, UniqueId, int, int>)Export(nccl, "ncclCommInitRank", path),
            AllReduce = (delegate* unmanaged<IntPtr, IntPtr, nuint, int, int, IntPtr, IntPtr, int>)Export(nccl, "ncclAllReduce", path),
            Broadcast = (delegate* unmanaged<IntPtr, IntPtr, nuint, int, int, IntPtr, IntPtr, int>)Export(nccl, "ncclBroadcast", path),
            CommDestroy = (delegate* unmanaged<IntPtr, int>)Export(nccl, "ncclCommDestroy", path),
            CommAbort = (delegate* unmanaged<IntPtr, int>)Export(nccl, "ncclCommAbort", path),
            CommGetAsyncError = (delegate* unmanaged<IntPtr, int*, int>)Export(nccl, "ncclCommGetAsyncError", path),
            GetErrorString = (delegate* unmanaged<int, byte*>)Export(nccl, "ncclGetErrorString", path),
            CudaSetDevice = (delegate* unmanaged<int, int>)Export(cudart, "cudaSetDevice", "libcudart"),
            CudaGetErrorString = (delegate* unmanaged<int, byte*>)Export(cudart, "cudaGetErrorString", "libcudart"),
        };
    }

    /// <summary>
    /// COMBADISTILL_NCCL; else the copy libtorch_cuda loaded (asked for by name without loading anything); else the pip
    /// layouts beside PyTorch's libraries; else whatever libnccl.so.2 the loader finds.
    /// </summary>
    static (IntPtr Handle, string Path) LoadNccl()
    {
        const string name = "libnccl.so.2";
        if (Environment.GetEnvironmentVariable(EnvironmentVariable) is { Length: > 0 } given)
        {
            if (!File.Exists(given)) throw new NativeRuntimeException($"{EnvironmentVariable} names {given}, which does not exist (expected a {name})");
            return (LoadOrThrow(given), given);
        }
        if (AlreadyLoaded(name) is { } resident) return (resident, name);
        var candidates = new List<string>();
        if (TorchRuntime.LibTorchDirectory is { } torchLib)
        {
            var sitePackages = System.IO.Path.GetFullPath(System.IO.Path.Combine(torchLib, "..", ".."));
            candidates.Add(System.IO.Path.Combine(sitePackages, "nvidia", "nccl", "lib", name));
            candidates.Add(System.IO.Path.Combine(sitePackages, "nvidia", "cu13", "lib", name));
            candidates.Add(System.IO.Path.Combine(torchLib, name));
        }
        foreach (var candidate in candidates.Where(File.Exists))
            return (LoadOrThrow(candidate), candidate);
        if (NativeLibrary.TryLoad(name, out var handle)) return (handle, name);
        throw new NativeRuntimeException($"NCCL not found: looked for {string.Join(", ", candidates.Append($"{name} on the loader's path"))}; " +
            $"set {EnvironmentVariable} to a {name} (a pip PyTorch has one in site-packages/nvidia/nccl/lib)");
    }

    /// <summary>The CUDA runtime libtorch_cuda loaded (asked for without loading anything), else the newest the loader finds.</summary>
    static IntPtr LoadCudaRuntime()
    {
        string[] names = ["libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so"];
        foreach (var name in names)
            if (AlreadyLoaded(name) is { } resident) return resident;
        foreach (var name in names)
            if (NativeLibrary.TryLoad(name, out var handle)) return handle;
        throw new NativeRuntimeException("the CUDA runtime (libcudart.so.*) is not loaded; is COMBADISTILL_LIBTORCH a CUDA build of PyTorch?");
    }

    static IntPtr? AlreadyLoaded(string name)
    {
        const int RtldLazy = 0x1, RtldNoload = 0x4;
        try
        {
            var handle = dlopen(name, RtldLazy | RtldNoload);
            return handle == IntPtr.Zero ? null : handle;
        }
        catch (EntryPointNotFoundException)
        {
            return null;    // glibc before 2.34 keeps dlopen in libdl; the plain search then decides
        }
    }

    static IntPtr LoadOrThrow(string path)
    {
        try { return NativeLibrary.Load(path); }
        catch (DllNotFoundException e) { throw new NativeRuntimeException($"cannot load {path}: {e.Message.Split('\n')[0]}", e); }
    }

    [DllImport("libc.so.6", SetLastError = true)]
    static extern int setenv(string name, string value, int overwrite);

    [DllImport("libc.so.6")]
    static extern IntPtr dlopen(string name, int flags);
}
