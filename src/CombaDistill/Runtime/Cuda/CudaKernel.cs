using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Runtime.Cuda;

/// <summary>
/// One <c>__global__</c> function of a loaded module, with what the compiler gave it (registers, local memory
/// per thread — non-zero means spills or a stack frame — and static shared memory), and a checked launch.
/// </summary>
public sealed unsafe class CudaKernel
{
    /// <summary>Dynamic shared memory above this needs the function's opt-in attribute raised first.</summary>
    public const int DefaultDynamicSharedLimit = 48 * 1024;

    readonly Lock gate = new();
    int dynamicSharedLimit = DefaultDynamicSharedLimit;

    public CudaDevice Device { get; }
    public string KernelFile { get; }
    /// <summary>The name it was requested by (extern "C" name or C++ name expression).</summary>
    public string Name { get; }
    public string LoweredName { get; }
    public IntPtr Handle { get; }
    public int Registers { get; }
    public int LocalBytesPerThread { get; }
    public int StaticSharedBytes { get; }
    public int MaxThreadsPerBlock { get; }
    /// <summary>Byte size of each parameter as the driver reports it; null on drivers before CUDA 12.4.</summary>
    public IReadOnlyList<int>? ParameterSizes { get; }

    internal CudaKernel(CudaDevice device, string kernelFile, string name, string loweredName, IntPtr handle)
    {
        Device = device;
        KernelFile = kernelFile;
        Name = name;
        LoweredName = loweredName;
        Handle = handle;
        Registers = CudaDriver.FunctionAttribute(handle, CudaDriver.FunctionNumRegs);
        LocalBytesPerThread = CudaDriver.FunctionAttribute(handle, CudaDriver.FunctionLocalSizeBytes);
        StaticSharedBytes = CudaDriver.FunctionAttribute(handle, CudaDriver.FunctionSharedSizeBytes);
        MaxThreadsPerBlock = CudaDriver.FunctionAttribute(handle, CudaDriver.FunctionMaxThreadsPerBlock);
        ParameterSizes = CudaDriver.ParameterSizes(handle);
    }

    public override string ToString() =>
        $"{Name} ({KernelFile}): {Registers} registers, {LocalBytesPerThread} B local memory per thread, {StaticSharedBytes} B static shared memory, at most {MaxThreadsPerBlock} threads per block";

    /// <summary>
    /// Launches on the NULL stream (the legacy default stream, where TorchSharp's ops run, so no synchronisation
    /// with the tensors' producers or consumers is needed). Arguments, in the kernel's parameter order:
    /// a CUDA <see cref="Tensor"/> (its data pointer; it must be on this kernel's device and contiguous),
    /// <see cref="IntPtr"/>, <see cref="int"/>, <see cref="uint"/>, <see cref="long"/>, <see cref="ulong"/>,
    /// <see cref="float"/>, <see cref="double"/>, <see cref="short"/>/<see cref="ushort"/> (e.g. a raw bf16) or
    /// <see cref="bool"/>, each passed with exactly its own width. Where the driver reports parameter sizes
    /// (CUDA 12.4+), a count or width mismatch is refused before launching. Asynchronous faults surface at the
    /// next synchronising call; run with CUDA_LAUNCH_BLOCKING=1 to pin them on the launch.
    /// </summary>
    public void Launch((int X, int Y, int Z) grid, (int X, int Y, int Z) block, int dynamicSharedBytes, params object[] args)
    {
        CheckDimensions(grid, block, dynamicSharedBytes);
        if (ParameterSizes is { } sizes && sizes.Count != args.Length)
            throw new ArgumentException($"{Name}: the kernel takes {sizes.Count} parameters; {args.Length} arguments were given");

        var n = Math.Max(1, args.Length);
        var slots = stackalloc ulong[n];       // one 8-byte-aligned slot per argument, the value at its start
        var pointers = stackalloc void*[n];     // what cuLaunchKernel reads each parameter from (stack memory does not move)
        for (int i = 0; i < args.Length; i++)
        {
            slots[i] = 0;
            var slot = (byte*)&slots[i];
            var width = args[i] is Tensor t ? KernelArgument.WritePointer(slot, DevicePointer(t, i)) : KernelArgument.Write(slot, args[i], Name, i);
            if (ParameterSizes is { } s && s[i] != width)
                throw new ArgumentException($"{Name}: parameter {i} is {s[i]} bytes wide; argument {i} is a {Describe(args[i])} ({width} bytes)");
            pointers[i] = slot;
        }

        using var context = Device.Enter();
        RaiseDynamicSharedLimit(dynamicSharedBytes);
        CudaDriver.LaunchKernel(Handle, grid, block, dynamicSharedBytes, pointers);
    }

    IntPtr DevicePointer(Tensor t, int index)
    {
        if (t.device_type != DeviceType.CUDA || t.device_index != Device.Ordinal)
            throw new ArgumentException($"{Name}: argument {index} is a tensor on {t.device}; the kernel runs on cuda:{Device.Ordinal}");
        if (!t.is_contiguous())
            throw new ArgumentException($"{Name}: argument {index} (shape [{string.Join(", ", t.shape)}]) is not contiguous; call .contiguous() first");
        return TensorMemory.DataPointer(t);
    }

    void CheckDimensions((int X, int Y, int Z) grid, (int X, int Y, int Z) block, int dynamicSharedBytes)
    {
        if (grid.X < 1 || grid.Y < 1 || grid.Z < 1 || block.X < 1 || block.Y < 1 || block.Z < 1)
            throw new ArgumentException($"{Name}: grid {grid} and block {block} must be positive in every dimension");
        if ((long)block.X * block.Y * block.Z > MaxThreadsPerBlock)
            throw new ArgumentException($"{Name}: a block of {block} has {(long)block.X * block.Y * block.Z} threads; this kernel allows at most {MaxThreadsPerBlock}");
        if (dynamicSharedBytes < 0 || dynamicSharedBytes + StaticSharedBytes > Device.MaxSharedMemoryPerBlockOptin)
            throw new ArgumentException($"{Name}: {dynamicSharedBytes} B dynamic + {StaticSharedBytes} B static shared memory exceeds the device's {Device.MaxSharedMemoryPerBlockOptin} B per block");
    }

    /// <summary>Above 48 KB a kernel must opt in to dynamic shared memory, once per size it grows to.</summary>
    void RaiseDynamicSharedLimit(int bytes)
    {
        if (bytes <= DefaultDynamicSharedLimit) return;
        lock (gate)
        {
            if (bytes <= dynamicSharedLimit) return;
            CudaDriver.SetFunctionAttribute(Handle, CudaDriver.FunctionMaxDynamicSharedSizeBytes, bytes);
            dynamicSharedLimit = bytes;
        }
    }

    static string Describe(object? arg) => arg?.GetType().Name ?? "null";
}

/// <summary>How each launch argument is laid out: exactly its own width, at the start of an 8-byte slot.</summary>
public static unsafe class KernelArgument
{
    /// <summary>Writes a non-tensor argument; returns its width in bytes.</summary>
    public static int Write(byte* slot, object arg, string kernel, int index)
    {
        switch (arg)
        {
            case IntPtr p: return WritePointer(slot, p);
            case int v: *(int*)slot = v; return 4;
            case uint v: *(uint*)slot = v; return 4;
            case long v: *(long*)slot = v; return 8;
            case ulong v: *(ulong*)slot = v; return 8;
            case float v: *(float*)slot = v; return 4;
            case double v: *(double*)slot = v; return 8;
            case short v: *(short*)slot = v; return 2;
            case ushort v: *(ushort*)slot = v; return 2;
            case bool v: *slot = v ? (byte)1 : (byte)0; return 1;
            default:
                throw new ArgumentException($"{kernel}: argument {index} is a {arg?.GetType().Name ?? "null"}; expected a Tensor, IntPtr, int, uint, long, ulong, float, double, short, ushort or bool");
        }
    }

    public static int WritePointer(byte* slot, IntPtr pointer)
    {
        *(IntPtr*)slot = pointer;
        return 8;
    }

    /// <summary>The bytes a non-tensor argument is passed as (for tests and diagnostics).</summary>
    public static byte[] Bytes(object arg)
    {
        ulong slot = 0;
        var width = Write((byte*)&slot, arg, "(kernel)", 0);
        return new ReadOnlySpan<byte>(&slot, width).ToArray();
    }
}

/// <summary>Raw data pointers of TorchSharp tensors, for kernel arguments.</summary>
public static class TensorMemory
{
    /// <summary>
    /// The address of the tensor's first element (its storage plus its offset), on whatever device it lives.
    /// TorchSharp 0.107 exposes only <c>Storage.data_ptr()</c>, which needs a storage of a managed element type
    /// (none for bf16) and ignores the offset; libLibTorchSharp's exported <c>THSTensor_data</c> is
    /// <c>at::Tensor::data_ptr()</c> for any dtype, so it is called directly.
    /// </summary>
    public static IntPtr DataPointer(Tensor t)
    {
        var pointer = THSTensor_data(t.Handle);
        if (pointer == IntPtr.Zero && t.numel() > 0)
            throw new InvalidOperationException($"libtorch returned no data pointer for a {t.dtype} tensor of shape [{string.Join(", ", t.shape)}] on {t.device}");
        return pointer;
    }

    [DllImport("LibTorchSharp")] static extern IntPtr THSTensor_data(IntPtr tensor);
}
