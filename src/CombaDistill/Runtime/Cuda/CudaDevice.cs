using System.Collections.Concurrent;
using TorchSharp;

namespace CombaDistill.Runtime.Cuda;

/// <summary>
/// One CUDA device as the kernels see it: the context PyTorch allocates in (its primary context) and the
/// properties a kernel's launch depends on. One instance per device ordinal for the process.
/// </summary>
public sealed class CudaDevice
{
    static readonly ConcurrentDictionary<int, Lazy<CudaDevice>> Devices = new();

    public int Ordinal { get; }
    /// <summary>The CUcontext kernels are loaded into and launched in.</summary>
    public IntPtr Context { get; }
    public int ComputeMajor { get; }
    public int ComputeMinor { get; }
    public int MultiprocessorCount { get; }
    /// <summary>The most shared memory one block may use after opting in (227 KB on Hopper).</summary>
    public int MaxSharedMemoryPerBlockOptin { get; }
    public int MaxThreadsPerBlock { get; }

    /// <summary>The real architecture NVRTC compiles a CUBIN for, e.g. sm_90.</summary>
    public string Architecture => $"sm_{ComputeMajor}{ComputeMinor}";

    CudaDevice(int ordinal, IntPtr context, int device)
    {
        Ordinal = ordinal;
        Context = context;
        ComputeMajor = CudaDriver.DeviceAttribute(device, CudaDriver.AttributeComputeCapabilityMajor);
        ComputeMinor = CudaDriver.DeviceAttribute(device, CudaDriver.AttributeComputeCapabilityMinor);
        MultiprocessorCount = CudaDriver.DeviceAttribute(device, CudaDriver.AttributeMultiprocessorCount);
        MaxSharedMemoryPerBlockOptin = CudaDriver.DeviceAttribute(device, CudaDriver.AttributeMaxSharedMemoryPerBlockOptin);
        MaxThreadsPerBlock = CudaDriver.DeviceAttribute(device, CudaDriver.AttributeMaxThreadsPerBlock);
    }

    /// <summary>
    /// The device behind a TorchSharp CUDA device (<c>cuda</c> means libtorch's current one). Throws
    /// <see cref="CudaUnavailableException"/> for a non-CUDA device or when libtorch or the driver has no CUDA.
    /// </summary>
    public static CudaDevice For(torch.Device device)
    {
        if (device.type != DeviceType.CUDA) throw new CudaUnavailableException($"{device} is not a CUDA device");
        if (device.index >= 0 && Devices.TryGetValue(device.index, out var known) && known.IsValueCreated)
            return known.Value;    // a tensor's device names its ordinal: nothing to ask libtorch
        if (!TorchRuntime.CudaAvailable)
            throw new CudaUnavailableException($"CUDA is not available to libtorch (set {TorchRuntime.LibTorchEnvironmentVariable} to a CUDA PyTorch's torch/lib)");
        // One TorchSharp CUDA call first: PyTorch creates (or re-selects) its context for this device, and the
        // tensor's device says which ordinal "cuda" means.
        int ordinal;
        using (var probe = torch.empty(1, device: device)) ordinal = probe.device_index;
        return Devices.GetOrAdd(ordinal, o => new Lazy<CudaDevice>(() => Open(o))).Value;
    }

    static CudaDevice Open(int ordinal)
    {
        CudaDriver.Initialize();
        var device = CudaDriver.Device(ordinal);
        // The context PyTorch made current, when it is this device's; otherwise (another thread, another device
        // selected since) the device's primary context, which is the one the CUDA runtime and so PyTorch allocate in.
        var current = CudaDriver.CurrentContext();
        var context = current != IntPtr.Zero && CudaDriver.CurrentContextDevice() == device ? current : CudaDriver.RetainPrimaryContext(device);
        return new CudaDevice(ordinal, context, device);
    }

    /// <summary>
    /// Makes <see cref="Context"/> current on this thread until disposed (a no-op when it already is; otherwise a
    /// push now and a pop at the end, so the caller's context is left as it was).
    /// </summary>
    public ContextScope Enter()
    {
        if (CudaDriver.CurrentContext() == Context) return new ContextScope(false);
        CudaDriver.PushContext(Context);
        return new ContextScope(true);
    }

    /// <summary>Bytes in use on the device (total − free, as nvidia-smi counts them: every process, PyTorch's cache included).</summary>
    public long MemoryInUse()
    {
        using var _ = Enter();
        var (free, total) = CudaDriver.MemoryInfo();
        return total - free;
    }

    /// <summary>A device for a report: a CUDA device with its architecture and SM count where the driver answers, else its name.</summary>
    public static string Describe(torch.Device device)
    {
        if (device.type != DeviceType.CUDA) return device.ToString();
        try { return For(device).ToString(); }
        catch (Exception e) when (e is CudaUnavailableException or CudaException) { return device.ToString(); }
    }

    public override string ToString() => $"cuda:{Ordinal} ({Architecture}, {MultiprocessorCount} SMs)";

    public readonly struct ContextScope(bool pushed) : IDisposable
    {
        public void Dispose()
        {
            if (pushed) CudaDriver.PopContext();
        }
    }
}
