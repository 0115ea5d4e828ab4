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
