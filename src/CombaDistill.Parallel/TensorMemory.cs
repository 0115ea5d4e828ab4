using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace CombaDistill.Runtime.Parallel;

/// <summary>
/// The memory behind a tensor, for handing to native collectives (NCCL on a GPU, a socket on the CPU). TorchSharp
/// keeps its data-pointer export internal; it is read here from the same native library TorchSharp uses.
/// </summary>
public static unsafe class TensorMemory
{
    static readonly Lazy<IntPtr> DataExport = new(() =>
    {
        TorchRuntime.Initialize();
        var library = NativeLibrary.Load(TorchRuntime.LibTorchSharpPath ?? throw new NativeRuntimeException("TorchSharp's native library is not loaded"));
        return NativeLibrary.GetExport(library, "THSTensor_data");
    });

    /// <summary>
    /// The address of the first element (storage offset included) of a contiguous tensor: device memory for a CUDA
    /// tensor. Valid while the tensor lives and is not resized.
    /// </summary>
    public static IntPtr Pointer(Tensor tensor)
    {
        if (!tensor.is_contiguous()) throw new ArgumentException("a collective needs a contiguous tensor", nameof(tensor));
        if (tensor.numel() == 0) return IntPtr.Zero;
        var pointer = ((delegate* unmanaged<IntPtr, IntPtr>)DataExport.Value)(tensor.Handle);
        return pointer != IntPtr.Zero ? pointer : throw new InvalidOperationException($"libtorch gave no data pointer for a {tensor.dtype} tensor on {tensor.device}");
    }

    /// <summary>The bytes of a contiguous CPU tensor, in place.</summary>
    public static Span<byte> Bytes(Tensor tensor)
    {
        if (tensor.device_type != TorchSharp.DeviceType.CPU) throw new ArgumentException($"a {tensor.device} tensor's memory is not host memory", nameof(tensor));
        return new Span<byte>((void*)Pointer(tensor), checked((int)(tensor.numel() * tensor.ElementSize)));
    }
}
