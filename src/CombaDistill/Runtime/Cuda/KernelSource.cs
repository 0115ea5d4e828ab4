using System.Reflection;

namespace CombaDistill.Runtime.Cuda;

/// <summary>
/// A CUDA C++ source: its file name (what NVRTC's log lines start with, and what errors name) and its text.
/// The library's own kernels are the files under kernels/ embedded as resources named <c>kernels/FILE.cu</c>
/// (see CombaDistill.csproj).
/// </summary>
public sealed record KernelSource(string FileName, string Text)
{
    static readonly Assembly Library = typeof(KernelSource).Assembly;

    /// <summary>Reads an embedded kernel, e.g. <c>FromResource("kernels/comba_fwd.cu")</c>.</summary>
    public static KernelSource FromResource(string resourceName)
    {
        using var stream = Library.GetManifestResourceStream(resourceName)
            ?? throw new ArgumentException($"no embedded kernel '{resourceName}'; the library has {string.Join(", ", EmbeddedKernels())}");
        using var reader = new StreamReader(stream);
        return new KernelSource(resourceName, reader.ReadToEnd());
    }

    /// <summary>The resource names of every embedded kernel source.</summary>
    public static IReadOnlyList<string> EmbeddedKernels() =>
        Library.GetManifestResourceNames().Where(n => n.StartsWith("kernels/", StringComparison.Ordinal) && n.EndsWith(".cu", StringComparison.Ordinal)).Order().ToList();
}
