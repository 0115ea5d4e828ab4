using System.Reflection;
using System.Runtime.InteropServices;

namespace CombaDistill.Runtime.Cuda;

/// <summary>Where NVRTC is looked for. <see cref="FromEnvironment"/> is what a run uses; tests pass their own folders.</summary>
/// <param name="ExplicitFile">COMBADISTILL_NVRTC: a libnvrtc file; when set, nothing else is tried</param>
/// <param name="LibTorchDirectory">the PyTorch torch/lib folder in use (pip wheels put NVRTC beside torch)</param>
/// <param name="CudaHome">CUDA_HOME</param>
/// <param name="CudaPath">CUDA_PATH</param>
/// <param name="DefaultToolkit">the usual toolkit location, /usr/local/cuda</param>
public sealed record NvrtcSearch(string? ExplicitFile, string? LibTorchDirectory, string? CudaHome, string? CudaPath, string? DefaultToolkit = "/usr/local/cuda")
{
    public const string EnvironmentVariable = "COMBADISTILL_NVRTC";

    public static NvrtcSearch FromEnvironment() => new(
        Env(EnvironmentVariable),
        TorchRuntime.LibTorchDirectory ?? Env(TorchRuntime.LibTorchEnvironmentVariable),
        Env("CUDA_HOME"),
        Env("CUDA_PATH"));

    static string? Env(string name) => Environment.GetEnvironmentVariable(name) is { Length: > 0 } v ? v : null;
}

/// <summary>Where NVRTC was found: a full path to load, or sonames left to the system loader, or why not.</summary>
public sealed record NvrtcLocation(string? Path, string? Problem, IReadOnlyList<string> Searched);

/// <summary>
/// Finds and loads libcuda (the driver, always from the system loader: it comes with the driver, never with a
/// toolkit or a wheel) and libnvrtc (from COMBADISTILL_NVRTC, beside the PyTorch in use, a CUDA toolkit, or the
/// loader's path, in that order), and points this assembly's <c>[DllImport]</c>s at them by full path.
/// </summary>
public static class CudaLibraries
{
    /// <summary>The names this assembly's DllImports use; <see cref="Resolve"/> maps them to loaded handles.</summary>
    internal const string Driver = "libcuda.so.1";
    internal const string NvrtcName = "combadistill-nvrtc";

    /// <summary>NVRTC sonames, newest first (CUDA 13, 12, 11.2+, an unversioned development link).</summary>
    public static readonly string[] NvrtcSonames = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so"];

    static readonly Lock Gate = new();
    static bool registered;
    static (IntPtr Handle, string? Problem)? driver;
    static (IntPtr Handle, string? Path, string? Problem)? nvrtc;

    /// <summary>Installs the DllImport resolver once (a resolver can be set only once per assembly).</summary>
    internal static void EnsureResolver()
    {
        lock (Gate)
        {
            if (registered) return;
            NativeLibrary.SetDllImportResolver(typeof(CudaLibraries).Assembly, Resolve);
            registered = true;
        }
    }

    static IntPtr Resolve(string name, Assembly assembly, DllImportSearchPath? searchPath) => name switch
    {
        Driver => LoadDriver(),
        NvrtcName => LoadNvrtc(),
        _ => IntPtr.Zero,   // everything else (LibTorchSharp) the runtime's default probing finds, as it does for TorchSharp
    };

    /// <summary>The loaded libcuda; throws <see cref="CudaUnavailableException"/> saying why not.</summary>
    internal static IntPtr LoadDriver()
    {
        lock (Gate)
        {
            driver ??= TryLoad(Driver) is { } h ? (h, null)
                : (IntPtr.Zero, $"the CUDA driver library {Driver} could not be loaded ({LoaderMessage(Driver)}); is an NVIDIA driver installed?");
            return driver.Value.Handle != IntPtr.Zero ? driver.Value.Handle : throw new CudaUnavailableException(driver.Value.Problem!);
        }
    }

    /// <summary>The loaded libnvrtc; throws <see cref="CudaUnavailableException"/> saying where it looked.</summary>
    internal static IntPtr LoadNvrtc()
    {
        lock (Gate)
        {
            nvrtc ??= LoadNvrtc(NvrtcSearch.FromEnvironment());
            return nvrtc.Value.Handle != IntPtr.Zero ? nvrtc.Value.Handle : throw new CudaUnavailableException(nvrtc.Value.Problem!);
        }
    }

    /// <summary>The NVRTC file in use, once loaded ("libnvrtc.so.13" when the system loader found it by soname).</summary>
    public static string? NvrtcPath { get { lock (Gate) return nvrtc?.Path; } }

    static (IntPtr, string?, string?) LoadNvrtc(NvrtcSearch search)
    {
        var location = LocateNvrtc(search);
        if (location.Problem is not null) return (IntPtr.Zero, null, location.Problem);
        if (location.Path is not null)
        {
            PreloadBuiltins(System.IO.Path.GetDirectoryName(location.Path)!);
            try { return (NativeLibrary.Load(location.Path), location.Path, null); }
            catch (DllNotFoundException e) { return (IntPtr.Zero, null, $"NVRTC at {location.Path} could not be loaded: {FirstLine(e.Message)}"); }
        }
        foreach (var soname in NvrtcSonames)
            if (TryLoad(soname) is { } h) return (h, soname, null);
        return (IntPtr.Zero, null,
            $"NVRTC (libnvrtc) was not found; looked in {string.Join(", ", location.Searched)} and for {string.Join(", ", NvrtcSonames)} on the loader's path. " +
            $"Set {NvrtcSearch.EnvironmentVariable} to a libnvrtc.so file (pip: site-packages/nvidia/cu13/lib/libnvrtc.so.13)");
    }

    /// <summary>
    /// NVRTC opens its companion libnvrtc-builtins by soname while compiling. A folder outside the loader's path
    /// (a pip wheel's, found through the PyTorch in use) would leave that open to the library's own RUNPATH; loading
    /// the companion first, by full path, makes the soname lookup find it already resident.
    /// </summary>
    static void PreloadBuiltins(string folder)
    {
        var builtins = Directory.Exists(folder) ? Directory.GetFiles(folder, "libnvrtc-builtins.so*").Order(StringComparer.Ordinal).FirstOrDefault() : null;
        if (builtins is not null) TryLoad(builtins);
    }

    /// <summary>
    /// The search itself, without loading: the first existing file among the candidates. With no file found,
    /// Path and Problem are both null and the caller tries the sonames through the system loader.
    /// </summary>
    public static NvrtcLocation LocateNvrtc(NvrtcSearch search)
    {
        if (search.ExplicitFile is { } file)
        {
            var full = System.IO.Path.GetFullPath(file);
            return File.Exists(full) ? new(full, null, [full])
                : new(null, $"{NvrtcSearch.EnvironmentVariable} names {full}, which does not exist", [full]);
        }
        var candidates = NvrtcCandidates(search);
        return new(candidates.FirstOrDefault(File.Exists), null, candidates);
    }

    /// <summary>Every full path tried, in order.</summary>
    public static IReadOnlyList<string> NvrtcCandidates(NvrtcSearch search)
    {
        var folders = new List<string>();
        if (search.LibTorchDirectory is { } torchLib)
        {
            // pip: site-packages/torch/lib, NVRTC in site-packages/nvidia/cu13/lib (CUDA 13 wheels) or
            // site-packages/nvidia/cuda_nvrtc/lib (CUDA 12 and older wheels)
            var sitePackages = System.IO.Path.GetFullPath(System.IO.Path.Combine(torchLib, "..", ".."));
            folders.Add(System.IO.Path.Combine(sitePackages, "nvidia", "cu13", "lib"));
            folders.Add(System.IO.Path.Combine(sitePackages, "nvidia", "cuda_nvrtc", "lib"));
        }
        foreach (var toolkit in new[] { search.CudaHome, search.CudaPath, search.DefaultToolkit })
            if (toolkit is not null) folders.Add(System.IO.Path.Combine(System.IO.Path.GetFullPath(toolkit), "lib64"));
        return folders.Distinct().SelectMany(f => NvrtcSonames.Select(s => System.IO.Path.Combine(f, s))).ToList();
    }

    static IntPtr? TryLoad(string name) => NativeLibrary.TryLoad(name, out var h) ? h : null;

    static string LoaderMessage(string name)
    {
        try { NativeLibrary.Free(NativeLibrary.Load(name)); return "loaded on retry"; }
        catch (DllNotFoundException e) { return FirstLine(e.Message); }
    }

    static string FirstLine(string s) => s.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).FirstOrDefault() ?? s;
}
