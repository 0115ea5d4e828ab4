using System.Runtime.InteropServices;
using TorchSharp;

namespace CombaDistill.Runtime;

/// <summary>Raised when the native runtime cannot load; the message is one line with the real cause.</summary>
public sealed class NativeRuntimeException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// Loads the native libtorch before anything touches TorchSharp. On CPU that is the libtorch shipped
/// in the build output (libtorch-cpu-linux-x64). For CUDA an installed PyTorch's libraries are
/// preloaded by full path from <c>COMBADISTILL_LIBTORCH</c> or <c>--libtorch</c>, because no CUDA
/// libtorch package is available to us.
/// </summary>
public static class TorchRuntime
{
    public const string LibTorchEnvironmentVariable = "COMBADISTILL_LIBTORCH";

    // Order matters: each library's dependencies are already resident when it is opened.
    static readonly string[] PyTorchLibraries = ["libc10.so", "libtorch_cpu.so", "libc10_cuda.so", "libtorch_cuda.so", "libtorch.so"];
    static readonly Lock Gate = new();
    static bool initialized;

    /// <summary>The PyTorch library folder in use, or null when the bundled CPU libtorch is.</summary>
    public static string? LibTorchDirectory { get; private set; }

    /// <summary>TorchSharp's native library as loaded, for the few of its exports that TorchSharp keeps internal.</summary>
    public static string? LibTorchSharpPath { get; private set; }

    public static bool CudaAvailable => Initialized(() => torch.cuda.is_available());

    /// <summary>Idempotent. <paramref name="libtorchDirectory"/> overrides the environment variable.</summary>
    public static void Initialize(string? libtorchDirectory = null)
    {
        lock (Gate)
        {
            if (initialized) return;
            var dir = libtorchDirectory ?? Environment.GetEnvironmentVariable(LibTorchEnvironmentVariable);
            if (!string.IsNullOrWhiteSpace(dir)) PreloadPyTorch(Path.GetFullPath(dir));
            LoadLibTorchSharp();
            if (LibTorchDirectory is not null)
            {
                // Touch CUDA through TorchSharp so its backend binds to the preloaded libtorch_cuda.
                torch.TryInitializeDeviceType(DeviceType.CUDA);
                if (torch.cuda.is_available()) WarmUpCudaLinalg();
            }
            initialized = true;
        }
    }

    /// <summary>
    /// PyTorch loads its CUDA linear-algebra library lazily on the first linalg call, and two threads making
    /// that first call at once fail with "lazy wrapper should be called at most once" (seen on the H200 host
    /// with parallel tests). One call here, under the initialisation lock, loads it before anyone races.
    /// </summary>
    static void WarmUpCudaLinalg()
    {
        using var scope = torch.NewDisposeScope();
        var a = torch.ones(1, 1, device: torch.CUDA);
        torch.linalg.solve_triangular(a, a, upper: false).cpu();
    }

    static T Initialized<T>(Func<T> f)
    {
        Initialize();
        return f();
    }

    static void PreloadPyTorch(string dir)
    {
        if (!File.Exists(Path.Combine(dir, "libtorch.so")))
            throw new NativeRuntimeException($"{LibTorchEnvironmentVariable}/--libtorch names '{dir}', which holds no libtorch.so (expected e.g. site-packages/torch/lib)");
        foreach (var name in PyTorchLibraries)
        {
            var path = Path.Combine(dir, name);
            if (!File.Exists(path))
            {
                if (name.Contains("cuda")) continue; // a CPU-only PyTorch is fine
                throw new NativeRuntimeException($"'{dir}' lacks {name}; is it a complete PyTorch installation?");
            }
            try { NativeLibrary.Load(path); }
            catch (Exception e) { throw new NativeRuntimeException($"cannot load {path}: {FirstLine(e.Message)}", e); }
        }
        LibTorchDirectory = dir;
    }

    static void LoadLibTorchSharp()
    {
        // Load our own patched copy by full path. If it fails we stop here with the loader's reason,
        // so TorchSharp's fallback (which copies unpatched natives from the NuGet cache) never runs.
        var baseDir = AppContext.BaseDirectory;
        string[] candidates =
        [
            Path.Combine(baseDir, "runtimes", "linux-x64", "native", "libLibTorchSharp.so"),
            Path.Combine(baseDir, "libLibTorchSharp.so"),
        ];
        var path = candidates.FirstOrDefault(File.Exists)
            ?? throw new NativeRuntimeException($"libLibTorchSharp.so is missing from {baseDir}; rebuild CombaDistill (dotnet build) so TorchSharp's natives are copied");
        try
        {
            if (LibTorchDirectory is null)
            {
                var torchCpu = Path.Combine(Path.GetDirectoryName(path)!, "libtorch_cpu.so");
                if (!File.Exists(torchCpu))
                    throw new NativeRuntimeException($"no CPU libtorch beside {path} and {LibTorchEnvironmentVariable} is not set; set it to an installed PyTorch's torch/lib folder or restore libtorch-cpu-linux-x64");
                NativeLibrary.Load(torchCpu);
            }
            NativeLibrary.Load(path);
            LibTorchSharpPath = path;
        }
        catch (DllNotFoundException e)
        {
            throw new NativeRuntimeException(Diagnose(path, e.Message), e);
        }
    }

    static string Diagnose(string path, string loaderMessage)
    {
        var line = FirstLine(loaderMessage);
        if (line.Contains("GLIBCXX_3.4.32"))
            return $"{path} needs GLIBCXX_3.4.32, which this system's libstdc++ lacks, and the build did not mark it weak: rebuild with 'dotnet build' (build/TorchSharpNative.targets patches the output copy). Loader said: {line}";
        return $"cannot load {path}: {line}";
    }

    static string FirstLine(string s) => s.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).FirstOrDefault() ?? s;
}
