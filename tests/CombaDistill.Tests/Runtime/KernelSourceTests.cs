using CombaDistill.Runtime.Cuda;

namespace CombaDistill.Tests.Runtime;

public class KernelSourceTests
{
    [Fact]
    public void The_shared_header_is_put_in_place_of_its_include_with_line_markers()
    {
        var text = KernelSource.Expanded("k.cu", "// first\n#include \"bf16.cuh\"\nint after;\n");
        var lines = text.Split('\n');
        Assert.Equal("// first", lines[0]);
        Assert.Equal("#line 1 \"kernels/bf16.cuh\"", lines[1]);
        Assert.Contains("typedef unsigned short bf16r;", text);
        var back = Array.IndexOf(lines, "#line 3 \"k.cu\"");
        Assert.True(back > 1, "the file's own numbering resumes after the header");
        Assert.Equal("int after;", lines[back + 1]);
        Assert.DoesNotContain(lines, l => l.StartsWith("#include"));
        // the embedded kernels come expanded
        Assert.Contains("__device__ __forceinline__ uint4 pack8", KernelSource.FromResource("kernels/rms_norm.cu").Text);
    }

    [Fact]
    public void An_include_of_a_header_that_is_not_embedded_names_the_file_and_line()
    {
        var e = Assert.Throws<ArgumentException>(() => KernelSource.Expanded("k.cu", "\n\n#include \"nothing.cuh\"\n"));
        Assert.Contains("k.cu:3", e.Message);
        Assert.Contains("kernels/nothing.cuh", e.Message);
    }
}
