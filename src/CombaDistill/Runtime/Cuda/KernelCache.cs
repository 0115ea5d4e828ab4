using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;
using CombaDistill.IO;
using TorchSharp;

namespace CombaDistill.Runtime.Cuda;

/// <summary>How a kernel source is compiled, beyond the fixed <c>-arch</c>, <c>--std=c++17</c> and <c>-default-device</c>.</summary>
public sealed record KernelCompileOptions
{
    /// <summary>Preprocessor definitions, "NAME" or "NAME=VALUE" (passed as -DNAME=VALUE).</summary>
    public IReadOnlyList<string> Defines { get; init; } = [];
    /// <summary>-lineinfo: source lines in profiles and sanitizer reports; costs nothing at run time.</summary>
    public bool LineInfo { get; init; } = true;
    /// <summary>The real architecture, e.g. "sm_90a" for Hopper's wgmma and TMA; null: the device's own (sm_90 on an H200).</summary>
    public string? Architecture { get; init; }
    /// <summary>Any further NVRTC options, verbatim.</summary>
    public IReadOnlyList<string> ExtraOptions { get; init; } = [];
}

/// <summary>
/// Compiles kernel sources with NVRTC at first use and keeps the CUBINs on disk, keyed by the SHA-256 of
/// (source, options, kernel names, NVRTC version, architecture), so a second process loads instead of compiling.
/// Loaded modules are kept per (context, key): one compilation and one load per process, however many threads ask
/// at once. The folder is <c>$COMBADISTILL_CACHE/kernels</c>, else <c>$XDG_CACHE_HOME/combadistill/kernels</c>,
/// else <c>~/.cache/combadistill/kernels</c>. Files are written through a temporary and a rename; a damaged file
/// (hash mismatch, or a CUBIN the driver refuses) is compiled again and replaced.
/// </summary>
public sealed class KernelCache : IDisposable
{
    public const string CacheEnvironmentVariable = "COMBADISTILL_CACHE";

    static readonly Lazy<KernelCache> Shared = new(() => new KernelCache(DefaultDirectory()));

    /// <summary>The process-wide cache every op uses.</summary>
    public static KernelCache Default => Shared.Value;

    public string Directory { get; }

    long compilations, diskHits, damagedFiles;
    /// <summary>NVRTC compilations this instance ran (a load from disk or memory runs none).</summary>
    public long Compilations => Interlocked.Read(ref compilations);
    /// <summary>Modules loaded from a cache file instead of compiled.</summary>
    public long DiskHits => Interlocked.Read(ref diskHits);
    /// <summary>Cache files found damaged and replaced by a fresh compilation.</summary>
    public long DamagedFiles => Interlocked.Read(ref damagedFiles);

    readonly ConcurrentDictionary<(IntPtr Context, string Key), Lazy<CudaModule>> modules = new();
    readonly Lazy<(int Major, int Minor)> nvrtcVersion = new(Nvrtc.Version);

    public KernelCache(string directory) => Directory = Path.GetFullPath(directory);

    public static string DefaultDirectory()
    {
        if (Environment.GetEnvironmentVariable(CacheEnvironmentVariable) is { Length: > 0 } root) return Path.Combine(root, "kernels");
        var xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } x ? x
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        return Path.Combine(xdg, "combadistill", "kernels");
    }

    /// <summary>Loads (compiling at most once) <paramref name="source"/> for a TorchSharp CUDA device.</summary>
    public CudaModule Load(torch.Device device, KernelSource source, IReadOnlyList<string> kernelNames, KernelCompileOptions? options = null) =>
        Load(CudaDevice.For(device), source, kernelNames, options);

    /// <summary>
    /// The module for <paramref name="source"/> on <paramref name="device"/>, with a function for each of
    /// <paramref name="kernelNames"/> (extern "C" names or C++ name expressions such as <c>scan&lt;128&gt;</c>).
    /// Throws <see cref="CudaCompileException"/> with NVRTC's log when the source does not compile. Each call hashes
    /// the source with the options and names to find the module, which costs a fraction of a millisecond: callers on
    /// a hot path keep the module they get (<see cref="EmbeddedModule"/> does, per device) rather than calling this per launch.
    /// </summary>
    public CudaModule Load(CudaDevice device, KernelSource source, IReadOnlyList<string> kernelNames, KernelCompileOptions? options = null)
    {
        if (kernelNames.Count == 0) throw new ArgumentException($"{source.FileName}: no kernel names given");
        options ??= new KernelCompileOptions();
        var architecture = options.Architecture ?? device.Architecture;
        var compilerOptions = CompilerOptions(architecture, options);
        var key = CacheKey(source.Text, compilerOptions, kernelNames, nvrtcVersion.Value, architecture);
        var slot = (device.Context, key);
        var lazy = modules.GetOrAdd(slot, _ => new Lazy<CudaModule>(
            () => LoadOrCompile(device, source, kernelNames, compilerOptions, key), LazyThreadSafetyMode.ExecutionAndPublication));
        try
        {
            return lazy.Value;
        }
        catch
        {
            // every caller waiting on this attempt saw the same exception; a later call tries again
            modules.TryRemove(KeyValuePair.Create(slot, lazy));
            throw;
        }
    }

    CudaModule LoadOrCompile(CudaDevice device, KernelSource source, IReadOnlyList<string> kernelNames, IReadOnlyList<string> compilerOptions, string key)
    {
        var path = Path.Combine(Directory, $"{Path.GetFileNameWithoutExtension(source.FileName)}-{key}.cubin");
        using var context = device.Enter();
        if (File.Exists(path))
        {
            var cached = ReadOrNull(path);
            if (cached is not null && kernelNames.All(cached.LoweredNames.ContainsKey) && CudaDriver.TryLoadModule(cached.Cubin, out var handle) == 0)
            {
                Interlocked.Increment(ref diskHits);
                return new CudaModule(device, handle, source.FileName, key, cached.LoweredNames, fromDiskCache: true);
            }
            Interlocked.Increment(ref damagedFiles);
        }

        var compiled = Nvrtc.Compile(source.Text, source.FileName, kernelNames, compilerOptions);
        Interlocked.Increment(ref compilations);
        var module = CudaDriver.LoadModule(compiled.Cubin);
        TryWrite(path, compiled);
        return new CudaModule(device, module, source.FileName, key, compiled.LoweredNames, fromDiskCache: false);
    }

    static NvrtcOutput? ReadOrNull(string path)
    {
        try { return CubinCacheFile.TryDeserialize(File.ReadAllBytes(path)); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }

    /// <summary>A cache that cannot be written (read-only home, full disk) costs a compilation next time, nothing more.</summary>
    static void TryWrite(string path, NvrtcOutput compiled)
    {
        try
        {
            System.IO.Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            AtomicFile.WriteAllBytes(path, CubinCacheFile.Serialize(compiled));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidInputException) { }
    }

    /// <summary>The NVRTC options for one architecture: fixed ones first, then -lineinfo, the defines and the extras.</summary>
    public static IReadOnlyList<string> CompilerOptions(string architecture, KernelCompileOptions options)
    {
        var list = new List<string> { $"-arch={architecture}", "--std=c++17", "-default-device" };
        if (options.LineInfo) list.Add("-lineinfo");
        foreach (var define in options.Defines)
        {
            if (string.IsNullOrWhiteSpace(define) || define.Any(char.IsWhiteSpace))
                throw new ArgumentException($"kernel define '{define}': expected NAME or NAME=VALUE without spaces");
            list.Add("-D" + define);
        }
        list.AddRange(options.ExtraOptions);
        return list;
    }

    /// <summary>Lower-case hex SHA-256 over every input that changes the CUBIN; each field length-prefixed so none can run into another.</summary>
    public static string CacheKey(string source, IReadOnlyList<string> compilerOptions, IReadOnlyList<string> kernelNames, (int Major, int Minor) nvrtcVersion, string architecture)
    {
        var text = new StringBuilder("combadistill-kernel-cache-1");
        void Field(string name, string value) => text.Append('\n').Append(name).Append(' ').Append(value.Length).Append(':').Append(value);
        Field("nvrtc", $"{nvrtcVersion.Major}.{nvrtcVersion.Minor}");
        Field("arch", architecture);
        foreach (var option in compilerOptions) Field("option", option);
        foreach (var name in kernelNames) Field("kernel", name);
        Field("source", source);
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())));
    }

    /// <summary>Unloads this cache's modules (after the device finishes with them). The default cache lives for the process.</summary>
    public void Dispose()
    {
        foreach (var lazy in modules.Values)
            if (lazy.IsValueCreated) lazy.Value.Dispose();
        modules.Clear();
    }
}
