using System.Runtime.CompilerServices;
using CombaDistill.Runtime;

namespace CombaDistill.Tests.Support;

/// <summary>Paths to the fixtures in ../shared (COMBADISTILL_SHARED overrides, e.g. on the GPU host).</summary>
public static class Shared
{
    public static string RepoRoot { get; } = FindRepoRoot();

    public static string Root { get; } =
        Environment.GetEnvironmentVariable("COMBADISTILL_SHARED") is { Length: > 0 } s ? Path.GetFullPath(s)
        : Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared"));

    public static string Stories260KBin => Path.Combine(Root, "models", "stories260K", "stories260K.bin");
    public static string Tok512Bin => Path.Combine(Root, "models", "stories260K", "tok512.bin");
    public static string TinyStoriesValid => Path.Combine(Root, "data", "tinystories-valid-head", "tinystories_val.txt");
    public static string TinyStoriesTrain => Path.Combine(Root, "data", "tinystories-train-head", "tinystories_train_head.txt");
    public static string TinyShakespeare => Path.Combine(Root, "data", "tinyshakespeare", "input.txt");

    static string FindRepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "CombaDistill.sln"))) return d.FullName;
        throw new InvalidOperationException($"CombaDistill.sln not found above {AppContext.BaseDirectory}");
    }
}

/// <summary>A fresh temporary folder per test, removed on dispose.</summary>
public sealed class TempDir : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("combadistill-test-").FullName;
    public string this[string name] => System.IO.Path.Combine(Path, name);
    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

static class TestStartup
{
    [ModuleInitializer]
    internal static void Init()
    {
        TorchRuntime.Initialize();
        // The models under test are tiny; on a small, shared CI machine libtorch's spinning worker threads
        // cost more than they give (measured: generation on stories260K ran ~10× slower with them).
        TorchSharp.torch.set_num_threads(1);
    }
}

/// <summary>The GPU lane: tests that need CUDA call <see cref="Require"/>, which skips (never passes) elsewhere.</summary>
public static class Gpu
{
    public static void Require() => Assert.SkipUnless(TorchRuntime.CudaAvailable, "CUDA is not available on this machine (GPU lane)");
}

/// <summary>
/// Tests that depend on process-wide state that a test running beside them would disturb: libtorch's global random
/// generator (dropout during training, a resumed run that must redraw the same masks) and the garbage collector's
/// latency mode (<see cref="CombaDistill.Runtime.CollectionPause"/>). This collection runs alone, after the parallel ones.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ProcessWideState
{
    public const string Name = "process-wide state (libtorch's generator, the GC's latency mode)";
}
