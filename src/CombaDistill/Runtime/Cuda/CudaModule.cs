using System.Collections.Concurrent;

namespace CombaDistill.Runtime.Cuda;

/// <summary>A compiled kernel source loaded into one device's context; hands out its kernels by the names it was compiled with.</summary>
public sealed class CudaModule : IDisposable
{
    readonly ConcurrentDictionary<string, CudaKernel> kernels = new();
    IntPtr handle;

    public CudaDevice Device { get; }
    public string KernelFile { get; }
    public string CacheKey { get; }
    /// <summary>Kernel name (as requested) → lowered name in the CUBIN.</summary>
    public IReadOnlyDictionary<string, string> LoweredNames { get; }
    /// <summary>True when the CUBIN came from the disk cache rather than from NVRTC.</summary>
    public bool FromDiskCache { get; }

    internal CudaModule(CudaDevice device, IntPtr handle, string kernelFile, string cacheKey, IReadOnlyDictionary<string, string> loweredNames, bool fromDiskCache)
    {
        Device = device;
        this.handle = handle;
        KernelFile = kernelFile;
        CacheKey = cacheKey;
        LoweredNames = loweredNames;
        FromDiskCache = fromDiskCache;
    }

    /// <summary>The kernel compiled for <paramref name="name"/> (one of the names given to <see cref="KernelCache.Load(CudaDevice, KernelSource, IReadOnlyList{string}, KernelCompileOptions?)"/>).</summary>
    public CudaKernel Kernel(string name)
    {
        if (!LoweredNames.TryGetValue(name, out var lowered))
            throw new ArgumentException($"{KernelFile}: '{name}' is not one of the kernels it was compiled for ({string.Join(", ", LoweredNames.Keys)})");
        ObjectDisposedException.ThrowIf(handle == IntPtr.Zero, this);
        return kernels.GetOrAdd(name, n =>
        {
            using var context = Device.Enter();
            return new CudaKernel(Device, KernelFile, n, lowered, CudaDriver.ModuleFunction(handle, lowered));
        });
    }

    public void Dispose()
    {
        if (handle == IntPtr.Zero) return;
        using var context = Device.Enter();
        CudaDriver.SynchronizeContext();   // no launch of ours may still be queued when its code goes away
        CudaDriver.UnloadModule(handle);
        handle = IntPtr.Zero;
    }
}
