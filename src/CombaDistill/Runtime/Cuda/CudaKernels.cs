using System.Collections.Concurrent;
using TorchSharp;

namespace CombaDistill.Runtime.Cuda;

/// <summary>
/// Whether the fused kernels can run on a device, and the one-line notice when an op falls back to its
/// TorchSharp form. The library never writes to the console: notices go to <see cref="Notices"/>, which the
/// CLI points at standard error.
/// </summary>
public static class CudaKernels
{
    public const string ProbeResource = "kernels/probe.cu";
    public const string ProbeKernel = "combadistill_probe";

    static readonly ConcurrentDictionary<string, Lazy<string?>> Probes = new();
    static readonly ConcurrentDictionary<string, byte> Noticed = new();

    /// <summary>Where fallback notices go (each distinct one once per process); null drops them.</summary>
    public static IProgress<string>? Notices { get; set; }

    /// <summary>
    /// Null when kernels compile, load and run on <paramref name="device"/>; otherwise why not, in one line: not a
    /// CUDA device, no CUDA in libtorch, libcuda or libnvrtc missing, or the probe kernel failing to compile or run.
    /// The probe (kernels/probe.cu through the default <see cref="KernelCache"/>) runs once per device and process.
    /// </summary>
    public static string? UnavailableReason(torch.Device device)
    {
        if (device.type != DeviceType.CUDA) return $"{device} is not a CUDA device";
        return Probes.GetOrAdd(device.ToString(), _ => new Lazy<string?>(() => Probe(device))).Value;
    }

    /// <summary>The brief form: true (with the reason) when the kernels cannot be used.</summary>
    public static bool TryGetUnavailableReason(torch.Device device, out string reason)
    {
        reason = UnavailableReason(device) ?? "";
        return reason.Length > 0;
    }

    /// <summary>Reports "<paramref name="op"/>: fused CUDA kernels unavailable (reason); using …" once per process.</summary>
    public static void ReportFallback(string op, string reason, string fallback = "the TorchSharp chunkwise path")
    {
        var line = $"{op}: fused CUDA kernels unavailable ({reason}); using {fallback}";
        if (Noticed.TryAdd(line, 0)) Notices?.Report(line);
    }

    static string? Probe(torch.Device device)
    {
        try
        {
            var cuda = CudaDevice.For(device);
            var module = KernelCache.Default.Load(cuda, KernelSource.FromResource(ProbeResource), [ProbeKernel]);
            using var scope = torch.NewDisposeScope();
            const int n = 33;   // two blocks of 32, the last thread of the second idle: the bounds check runs too
            var output = torch.full(n, -1f, device: device);
            module.Kernel(ProbeKernel).Launch((2, 1, 1), (32, 1, 1), 0, output, 1.5f, n);
            var expected = torch.arange(n, dtype: torch.ScalarType.Float32) + 1.5f;
            return output.cpu().eq(expected).all().item<bool>() ? null : $"the probe kernel ran on {cuda} but wrote wrong values";
        }
        catch (CudaUnavailableException e) { return e.Message; }
        catch (CudaCompileException e) { return $"NVRTC could not compile {e.KernelFile}: {e.Log.Split('\n')[0]}"; }
        catch (CudaException e) { return e.Message; }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return $"a CUDA library is incomplete: {e.Message.Split('\n')[0]}"; }
    }
}

/// <summary>An IProgress that reports on the caller's thread, at once (Progress&lt;T&gt; posts, so lines could arrive late or never).</summary>
public sealed class ImmediateProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}
