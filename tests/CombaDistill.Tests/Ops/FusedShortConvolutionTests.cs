using CombaDistill.Modeling.Comba;
using CombaDistill.Ops;
using CombaDistill.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Ops;

/// <summary>
/// <see cref="FusedShortConvolution"/> against the convolution in float64 by conv1d (the module's own path, written
/// out here): output and both gradients, at a length that is not a multiple of anything the kernels use, channels
/// that do not fill the last block, and lengths shorter than the kernel. Then the module with the kernels switched on
/// against the module with them off, output and decoding cache.
/// </summary>
[Collection(ProcessWideState.Name)]
public sealed class FusedShortConvolutionTests
{
    static (Tensor Y, Tensor Dx, Tensor Dw) Reference(Tensor x, Tensor w, Tensor dy)
    {
        var x64 = x.to(ScalarType.Float64, CPU).detach().requires_grad_();
        var w64 = w.to(ScalarType.Float64, CPU).detach().requires_grad_();
        var (b, c) = (x64.shape[0], x64.shape[2]);
        var window = cat([zeros([b, c, 3], ScalarType.Float64), x64.transpose(1, 2)], 2);
        var y = nn.functional.conv1d(window, w64, groups: c).transpose(1, 2);
        y.backward([dy.to(ScalarType.Float64, CPU)]);
        return (y.detach(), x64.grad!, w64.grad!);
    }


    /// <summary>Each case with the one-channel kernels and with the eight-channel ones (which take C a multiple of 8).</summary>
    [Theory]
    [InlineData(2, 37, 300, false)]
    [InlineData(2, 37, 300, true)]
    [InlineData(1, 2, 64, false)]
    [InlineData(1, 2, 64, true)]
    [InlineData(3, 129, 512, false)]
    [InlineData(3, 129, 512, true)]
    [InlineData(2, 70, 296, true)]
    [InlineData(1, 300, 2048, true)]
    public void On_CUDA_output_and_gradients_match_conv1d_in_float64(int batch, int length, int channels, bool wide)
    {
        Gpu.Require();
        var before = Environment.GetEnvironmentVariable(FusedShortConvolution.WideVariable);
        try
        {
            Environment.SetEnvironmentVariable(FusedShortConvolution.WideVariable, wide ? "1" : "0");
            var g = new Generator(7);
            var x = randn([batch, length, channels], generator: g).to(ScalarType.BFloat16).to(CUDA).requires_grad_();
            var w = (randn([channels, 1, 4], generator: g) * 0.5).to(CUDA).requires_grad_();
            var dy = randn([batch, length, channels], generator: g).to(ScalarType.BFloat16).to(CUDA);
            Assert.Equal(wide && channels % 8 == 0, FusedShortConvolution.Wide(x, dy));
            var y = FusedShortConvolution.Forward(x, w);
            y.backward([dy]);
            var (yRef, dxRef, dwRef) = Reference(x, w, dy);
            // bf16 output and input gradient: a few units of bf16 rounding; the weight gradient is summed in float32
            Assert.True(Compare.WorstRelative(y, yRef) < 1e-2, $"y: {Compare.WorstRelative(y, yRef)}");
            Assert.True(Compare.WorstRelative(x.grad!, dxRef) < 1e-2, $"dx: {Compare.WorstRelative(x.grad!, dxRef)}");
            Assert.True(Compare.WorstRelative(w.grad!, dwRef) < 1e-4, $"dw: {Compare.WorstRelative(w.grad!, dwRef)}");
        }
        finally { Environment.SetEnvironmentVariable(FusedShortConvolution.WideVariable, before); }
    }

    [Theory]
    [InlineData(2)]
    [InlineData(40)]
    public void On_CUDA_the_module_gives_the_same_output_and_cache_with_the_kernels_on(int length)
    {
        Gpu.Require();
        var g = new Generator(9);
        var conv = new ShortConvolution("conv", 96, 4, CUDA, ScalarType.BFloat16);
        using (no_grad()) conv.weight.copy_(randn([96, 1, 4], generator: g).to(ScalarType.BFloat16).to(CUDA));
        var x = randn([2, length, 96], generator: g).to(ScalarType.BFloat16).to(CUDA);
        var before = Environment.GetEnvironmentVariable(FusedShortConvolution.EnvironmentVariable);
        try
        {
            Environment.SetEnvironmentVariable(FusedShortConvolution.EnvironmentVariable, "0");
            var (plain, plainCache) = conv.forward(x, null);
            Environment.SetEnvironmentVariable(FusedShortConvolution.EnvironmentVariable, "1");
            Assert.True(FusedShortConvolution.Use(x, conv.weight, null));
            var (fused, fusedCache) = conv.forward(x, null);
            Assert.True(Compare.WorstRelative(fused, plain.to(ScalarType.Float64, CPU)) < 1e-2);
            Assert.Equal(plainCache.shape, fusedCache.shape);
            Assert.Equal(0, (fusedCache.to(ScalarType.Float32) - plainCache.to(ScalarType.Float32)).abs().max().item<float>());
        }
        finally { Environment.SetEnvironmentVariable(FusedShortConvolution.EnvironmentVariable, before); }
    }

    [Fact]
    public void It_declines_the_CPU_a_cache_and_other_kernel_widths()
    {
        var x = zeros([1, 5, 8], ScalarType.BFloat16);
        Assert.False(FusedShortConvolution.Takes(x, zeros([8, 1, 4]), null));
        if (!cuda.is_available()) return;
        var xc = x.to(CUDA);
        Assert.True(FusedShortConvolution.Takes(xc, zeros([8, 1, 4], device: CUDA), null));
        Assert.False(FusedShortConvolution.Takes(xc, zeros([8, 1, 4], device: CUDA), zeros([1, 8, 3], device: CUDA)));
        Assert.False(FusedShortConvolution.Takes(xc, zeros([8, 1, 3], device: CUDA), null));
        Assert.False(FusedShortConvolution.Takes(xc.to(ScalarType.Float32), zeros([8, 1, 4], device: CUDA), null));
    }
}
