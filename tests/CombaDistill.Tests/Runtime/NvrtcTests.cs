using CombaDistill.Runtime;
using CombaDistill.Runtime.Cuda;

namespace CombaDistill.Tests.Runtime;

/// <summary>
/// NVRTC needs no GPU: these run wherever libnvrtc loads (the GPU host, and any machine with a CUDA toolkit or
/// NVRTC package), and skip elsewhere. They compile for sm_80, which every NVRTC from 11.2 to 13 supports.
/// </summary>
public class NvrtcTests
{
    static readonly IReadOnlyList<string> Sm80 = KernelCache.CompilerOptions("sm_80", TestKernels.Exact);

    static void RequireNvrtc() => Assert.SkipUnless(TestKernels.NvrtcAvailable, "libnvrtc is not installed here");

    [Fact]
    public void Header_free_kernels_compile_to_a_cubin_with_their_lowered_names()
    {
        RequireNvrtc();
        var (major, minor) = Nvrtc.Version();
        Assert.True(major >= 11, $"NVRTC {major}.{minor}");
        var output = Nvrtc.Compile(TestKernels.Source.Text, TestKernels.Source.FileName, TestKernels.Names, Sm80);
        Assert.Equal("\u007fELF"u8.ToArray(), output.Cubin[..4]);
        Assert.Equal("axpy_f32", output.LoweredNames["axpy_f32"]);          // extern "C": the name itself
        Assert.Equal("axpy_bf16", output.LoweredNames["axpy_bf16"]);
        Assert.StartsWith("_Z", output.LoweredNames["fill<3>"]);            // a template instance: mangled
        Assert.Contains("fill", output.LoweredNames["fill<3>"]);
        Assert.Equal(TestKernels.Names.Length, output.LoweredNames.Count);
    }

    [Fact]
    public void The_embedded_probe_kernel_compiles()
    {
        RequireNvrtc();
        var probe = KernelSource.FromResource(CudaKernels.ProbeResource);
        var output = Nvrtc.Compile(probe.Text, probe.FileName, [CudaKernels.ProbeKernel], KernelCache.CompilerOptions("sm_80", new KernelCompileOptions()));
        Assert.True(output.Cubin.Length > 100);
        Assert.Equal(CudaKernels.ProbeKernel, output.LoweredNames[CudaKernels.ProbeKernel]);
    }

    /// <summary>The embedded kernels that take the shared header compile once it is expanded, each with every kernel it declares.</summary>
    [Fact]
    public void Embedded_kernels_with_the_shared_header_compile()
    {
        RequireNvrtc();
        var withHeader = KernelSource.EmbeddedKernels().Where(k => KernelSourceText(k).Contains("#include \"bf16.cuh\"")).ToList();
        Assert.Equal(["kernels/adamw.cu", "kernels/logit_loss.cu", "kernels/rms_norm.cu", "kernels/short_conv.cu"], withHeader);
        foreach (var kernel in withHeader)
        {
            var source = KernelSource.FromResource(kernel);
            var names = System.Text.RegularExpressions.Regex.Matches(source.Text, @"extern ""C"" __global__ void (?:__launch_bounds__\(\w+\) )?(\w+)\(")
                .Select(m => m.Groups[1].Value).ToArray();
            Assert.NotEmpty(names);
            var output = Nvrtc.Compile(source.Text, source.FileName, names, Sm80);
            Assert.Equal(names.Length, output.LoweredNames.Count);
        }
    }

    [Fact]
    public void An_error_after_the_shared_header_is_reported_on_its_own_files_line()
    {
        RequireNvrtc();
        var text = KernelSource.Expanded("after.cu", "// one\n#include \"bf16.cuh\"\nextern \"C\" __global__ void after(float* y) { y[0] = rounded(1.f) + not_declared; }\n");
        var e = Assert.Throws<CudaCompileException>(() => Nvrtc.Compile(text, "after.cu", ["after"], Sm80));
        Assert.Matches(@"after\.cu\(3\): error: identifier ""not_declared"" is undefined", e.Log);
    }

    static string KernelSourceText(string resource)
    {
        using var stream = typeof(KernelSource).Assembly.GetManifestResourceStream(resource)!;
        return new StreamReader(stream).ReadToEnd();
    }

    [Fact]
    public void A_syntax_error_names_the_file_and_line_with_NVRTCs_log()
    {
        RequireNvrtc();
        var e = Assert.Throws<CudaCompileException>(() => Nvrtc.Compile(TestKernels.Broken.Text, TestKernels.Broken.FileName, ["broken"], Sm80));
        Assert.Equal("broken.cu", e.KernelFile);
        // line 3 lacks its ';', which NVRTC 11.8 reports at the next token, on line 4
        Assert.Matches(@"broken\.cu\([34]\): error: expected a "";""", e.Log);
        Assert.Matches(@"broken\.cu\([34]\): error", e.Message);
        Assert.Contains("-arch=sm_80", e.Message);
    }

    [Fact]
    public void An_unknown_option_is_a_compile_error_too()
    {
        RequireNvrtc();
        var e = Assert.Throws<CudaCompileException>(() => Nvrtc.Compile(TestKernels.Source.Text, "k.cu", ["axpy_f32"], ["-arch=sm_80", "--no-such-option"]));
        Assert.Contains("k.cu", e.Message);
    }

    [Fact]
    public void Defines_reach_the_source()
    {
        RequireNvrtc();
        var source = """
            #ifndef WIDTH
            #error WIDTH must be defined
            #endif
            extern "C" __global__ void k(float* out) { out[0] = WIDTH; }
            """;
        var options = KernelCache.CompilerOptions("sm_80", new KernelCompileOptions { Defines = ["WIDTH=128"] });
        Assert.NotEmpty(Nvrtc.Compile(source, "defines.cu", ["k"], options).Cubin);
        var e = Assert.Throws<CudaCompileException>(() => Nvrtc.Compile(source, "defines.cu", ["k"], KernelCache.CompilerOptions("sm_80", new KernelCompileOptions())));
        Assert.Contains("WIDTH must be defined", e.Log);
    }

    [Fact]
    public void Without_a_GPU_the_driver_names_its_problem()
    {
        Assert.SkipWhen(TorchRuntime.CudaAvailable, "a GPU is present; the GPU lane covers the driver");
        var e = Record.Exception(CudaDriver.Initialize);
        Assert.NotNull(e);
        switch (e)
        {
            case CudaUnavailableException missing: Assert.Contains("libcuda.so.1", missing.Message); break;   // no driver library at all
            case CudaException failed: Assert.StartsWith("cuInit failed: CUDA_ERROR_", failed.Message); break; // a driver, but no device
            default: Assert.Fail($"unexpected {e.GetType().Name}: {e.Message}"); break;
        }
    }
}
