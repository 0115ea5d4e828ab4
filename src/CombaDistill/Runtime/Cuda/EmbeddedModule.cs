using System.Collections.Concurrent;
using TorchSharp;

namespace CombaDistill.Runtime.Cuda;

/// <summary>
/// One embedded kernel file (kernels/NAME.cu) and the kernels an op launches from it, with the loaded module kept per
/// device. <see cref="KernelCache.Load(CudaDevice, KernelSource, IReadOnlyList{string}, KernelCompileOptions?)"/> reads
/// the embedded source and hashes it with the options and names on every call; done per launch, that cost
/// `bench kernel`'s bf16 forward at (8, 2048, 16, 128) 2.54 ms against 1.19 ms once the module was kept, on an H100
/// (about 0.3 ms a launch). An op keeps one of these in a static field and asks it for the module at each launch.
/// </summary>
/// <param name="options">compile options (e.g. defines that choose which entry points a file compiles); null: the defaults</param>
public sealed class EmbeddedModule(string resourceName, IReadOnlyList<string> kernelNames, KernelCompileOptions? options = null)
{
    readonly ConcurrentDictionary<int, CudaModule> modules = new();

    public string ResourceName { get; } = resourceName;

    /// <summary>The module on <paramref name="device"/>, compiled or read from the disk cache at the first call (a failure is not kept: the next call tries again).</summary>
    public CudaModule For(CudaDevice device) =>
        modules.GetOrAdd(device.Ordinal, _ => KernelCache.Default.Load(device, KernelSource.FromResource(ResourceName), kernelNames, options));

    public CudaModule For(torch.Device device) => For(CudaDevice.For(device));

    /// <summary>Set once the module could not be built or loaded on some device: <see cref="TryFor"/> answers null from then on.</summary>
    volatile bool unavailable;

    /// <summary>
    /// For an op with a tensor-op fallback: the module on <paramref name="device"/>, or null where it cannot be built
    /// or loaded (no driver, no NVRTC, a compile error). The first failure prints one warning naming
    /// <paramref name="what"/> and <paramref name="fallback"/>; later calls answer null at once.
    /// </summary>
    public CudaModule? TryFor(torch.Device device, string what, string fallback)
    {
        if (unavailable) return null;
        try
        {
            return For(device);
        }
        catch (Exception e) when (e is CudaException or CudaCompileException or CudaUnavailableException or DllNotFoundException)
        {
            if (!unavailable) Console.Error.WriteLine($"warning: {what} is unavailable ({e.Message}); {fallback}");
            unavailable = true;
            return null;
        }
    }
}
