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

    /// <summary>
    /// Reads an embedded kernel, e.g. <c>FromResource("kernels/comba_fwd.cu")</c>, with each line
    /// <c>#include "NAME.cuh"</c> replaced by the embedded <c>kernels/NAME.cuh</c> (NVRTC finds no files of its own):
    /// #line directives keep NVRTC's messages on the lines of the file they come from, and the text, which keys the
    /// kernel cache, holds the header's contents.
    /// </summary>
    public static KernelSource FromResource(string resourceName) =>
        new(resourceName, Expanded(resourceName, Read(resourceName) ?? throw new ArgumentException(
            $"no embedded kernel '{resourceName}'; the library has {string.Join(", ", EmbeddedKernels())}")));

    static string? Read(string resourceName)
    {
        using var stream = Library.GetManifestResourceStream(resourceName);
        if (stream is null) return null;
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }

    /// <summary>The text with its <c>#include "NAME.cuh"</c> lines replaced by the embedded headers (see <see cref="FromResource"/>).</summary>
    public static string Expanded(string fileName, string text)
    {
        var lines = text.Split('\n');
        var output = new System.Text.StringBuilder();
        for (var i = 0; i < lines.Length; i++)
        {
            var line = lines[i].TrimEnd('\r');
            if (line.StartsWith("#include \"", StringComparison.Ordinal) && line.EndsWith(".cuh\"", StringComparison.Ordinal))
            {
                var header = "kernels/" + line["#include \"".Length..^1];
                var body = Read(header) ?? throw new ArgumentException($"{fileName}:{i + 1}: no embedded header '{header}'");
                output.Append($"#line 1 \"{header}\"\n").Append(body.TrimEnd('\n')).Append('\n')
                      .Append($"#line {i + 2} \"{fileName}\"\n");
            }
            else output.Append(lines[i]).Append(i < lines.Length - 1 ? "\n" : "");
        }
        return output.ToString();
    }

    /// <summary>The resource names of every embedded kernel source.</summary>
    public static IReadOnlyList<string> EmbeddedKernels() =>
        Library.GetManifestResourceNames().Where(n => n.StartsWith("kernels/", StringComparison.Ordinal) && n.EndsWith(".cu", StringComparison.Ordinal)).Order().ToList();
}
