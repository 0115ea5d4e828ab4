using CombaDistill.Modeling;
using CombaDistill.Ops;
using CombaDistill.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Ops;

/// <summary>
/// <see cref="FusedRmsNorm"/> against the norm written out in float64 (no rounding anywhere): output, the input's
/// gradient and the weight's, at widths that fill whole warps, leave part of one, and are Llama's and Qwen2's; then
/// the module with the kernels on against the module's own tensor ops on the same GPU.
/// </summary>
[Collection(ProcessWideState.Name)]
public sealed class FusedRmsNormTests
{
    const double Eps = 1e-5;

    static (Tensor Y, Tensor Dx, Tensor Dw) Reference(Tensor x, Tensor w, Tensor dy)
    {
        var x64 = x.to(ScalarType.Float64, CPU).detach().requires_grad_();
        var w64 = w.to(ScalarType.Float64, CPU).detach().requires_grad_();
        var y = w64 * (x64 * (x64.square().mean([-1], keepdim: true) + Eps).rsqrt());
        y.backward([dy.to(ScalarType.Float64, CPU)]);
        return (y.detach(), x64.grad!, w64.grad!);
    }


    [Theory]
    [InlineData(2, 37, 896)]
    [InlineData(1, 5, 64)]
    [InlineData(3, 100, 2048)]
    [InlineData(1, 3, 4104)]
    public void On_CUDA_output_and_both_gradients_match_the_norm_in_float64(int batch, int length, int width)
    {
        Gpu.Require();
        var g = new Generator(3);
        var x = (randn([batch, length, width], generator: g) * 3 + 0.5).to(ScalarType.BFloat16).to(CUDA).requires_grad_();
        var w = (randn([width], generator: g) * 0.2 + 1).to(ScalarType.BFloat16).to(CUDA).requires_grad_();
        var dy = randn([batch, length, width], generator: g).to(ScalarType.BFloat16).to(CUDA);
        Assert.True(FusedRmsNorm.Takes(x, w));
        var y = FusedRmsNorm.Forward(x, w, Eps);
        y.backward([dy]);
        var (yRef, dxRef, dwRef) = Reference(x, w, dy);
        // y carries two bf16 roundings (the normalised row, then the product), dx one (and dy · w rounded as the tensor
        // ops round it); the weight's gradient is summed over the rows in float32
        Assert.True(Compare.WorstRelative(y, yRef) < 1e-2, $"y: {Compare.WorstRelative(y, yRef)}");
        Assert.True(Compare.WorstRelative(x.grad!, dxRef) < 2e-2, $"dx: {Compare.WorstRelative(x.grad!, dxRef)}");
        Assert.True(Compare.WorstRelative(w.grad!, dwRef) < 1e-2, $"dw: {Compare.WorstRelative(w.grad!, dwRef)}");

        // without gradients it is the same kernel with nothing saved: the same bits
        using (no_grad())
            Assert.True(FusedRmsNorm.Forward(x.detach(), w.detach(), Eps).equal(y.detach()).all().item<bool>());
    }

    [Fact]
    public void On_CUDA_the_module_with_the_kernels_follows_its_own_tensor_ops()
    {
        Gpu.Require();
        var g = new Generator(5);
        var norm = new RMSNorm(512, Eps, ScalarType.BFloat16, CUDA);
        using (no_grad()) norm.weight.copy_((randn([512], generator: g) * 0.1 + 1).to(ScalarType.BFloat16).to(CUDA));
        var x = randn([4, 33, 512], generator: g).to(ScalarType.BFloat16).to(CUDA);
        var before = Environment.GetEnvironmentVariable(FusedRmsNorm.EnvironmentVariable);
        try
        {
            (Tensor Y, Tensor Dx, Tensor Dw) Run(string on)
            {
                Environment.SetEnvironmentVariable(FusedRmsNorm.EnvironmentVariable, on);
                norm.weight.grad = null;
                var xi = x.detach().clone().requires_grad_();
                var y = norm.forward(xi);
                y.to(ScalarType.Float32).square().sum().backward();
                return (y.detach(), xi.grad!, norm.weight.grad!.clone());
            }
            var plain = Run("0");
            var fused = Run("1");
            Assert.True(FusedRmsNorm.Use(x, norm.weight));
            // the same roundings but the row's statistics summed in another order: at most a unit of bf16 apart
            Assert.True(Compare.WorstRelative(fused.Y, plain.Y.to(ScalarType.Float64, CPU)) < 1e-2, $"y: {Compare.WorstRelative(fused.Y, plain.Y.to(ScalarType.Float64, CPU))}");
            Assert.True(Compare.WorstRelative(fused.Dx, plain.Dx.to(ScalarType.Float64, CPU)) < 2e-2, $"dx: {Compare.WorstRelative(fused.Dx, plain.Dx.to(ScalarType.Float64, CPU))}");
            Assert.True(Compare.WorstRelative(fused.Dw, plain.Dw.to(ScalarType.Float64, CPU)) < 2e-2, $"dw: {Compare.WorstRelative(fused.Dw, plain.Dw.to(ScalarType.Float64, CPU))}");
        }
        finally { Environment.SetEnvironmentVariable(FusedRmsNorm.EnvironmentVariable, before); }
    }

    [Fact]
    public void It_declines_the_CPU_float32_and_widths_that_are_not_a_multiple_of_8()
    {
        Assert.False(FusedRmsNorm.Takes(zeros([2, 64], ScalarType.BFloat16), ones([64], ScalarType.BFloat16)));
        if (!cuda.is_available()) return;
        Assert.True(FusedRmsNorm.Takes(zeros([2, 64], ScalarType.BFloat16, CUDA), ones([64], ScalarType.BFloat16, CUDA)));
        Assert.False(FusedRmsNorm.Takes(zeros([2, 64], ScalarType.Float32, CUDA), ones([64], ScalarType.Float32, CUDA)));
        Assert.False(FusedRmsNorm.Takes(zeros([2, 100], ScalarType.BFloat16, CUDA), ones([100], ScalarType.BFloat16, CUDA)));
        Assert.False(FusedRmsNorm.Takes(zeros([2, 64], ScalarType.BFloat16, CUDA), ones([32], ScalarType.BFloat16, CUDA)));
    }
}
