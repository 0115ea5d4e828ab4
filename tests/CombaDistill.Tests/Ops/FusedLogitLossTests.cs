using CombaDistill.Ops;
using CombaDistill.Tests.Support;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Ops;

/// <summary>
/// The fused logit-loss kernel (GPU lane) against a float64 reference computed on the CPU from the same bf16 logits:
/// each row's KL and cross-entropy, and the gradient (which the kernel rounds to bf16 once). Rows of a vocabulary
/// that is not a multiple of the block's 256 threads, temperatures 1 and 2, KL alone, CE alone and both.
/// </summary>
public sealed class FusedLogitLossTests
{
    [Theory]
    [InlineData(1.0, true, true)]
    [InlineData(2.0, true, true)]
    [InlineData(1.0, true, false)]
    [InlineData(1.5, false, true)]
    public void The_kernel_matches_the_float64_reference(double temperature, bool withKl, bool withCe)
    {
        Gpu.Require();
        const int batch = 2, span = 3, vocab = 1001;
        var g = new Generator(17);
        var zs = (randn([batch, span, vocab], generator: g) * 3).to(ScalarType.BFloat16);
        var zt = (randn([batch, span, vocab], generator: g) * 3).to(ScalarType.BFloat16);
        var targets = randint(0, vocab, [batch, span], generator: g);
        const double klScale = 0.7, ceScale = 0.3;

        var (gradient, klRows, ceRows) = FusedLogitLoss.Rows(zs.to(CUDA), withKl ? zt.to(CUDA) : null, withCe ? targets.to(CUDA) : null,
            temperature, klScale, ceScale, gradient: true);

        var (s, t) = (zs.to(ScalarType.Float64), zt.to(ScalarType.Float64));
        var logS = (s / temperature).log_softmax(-1);
        var logT = (t / temperature).log_softmax(-1);
        var log1 = s.log_softmax(-1);
        var expected = zeros_like(s);
        if (withKl)
        {
            var kl = (logT.exp() * (logT - logS)).sum(-1).reshape(-1);
            Assert.True(allclose(klRows!.cpu().to(ScalarType.Float64), kl, rtol: 1e-4, atol: 1e-5), "KL rows differ");
            expected += (logS.exp() - logT.exp()) * klScale;
        }
        else Assert.Null(klRows);
        if (withCe)
        {
            var ce = -log1.gather(-1, targets.unsqueeze(-1)).reshape(-1);
            Assert.True(allclose(ceRows!.cpu().to(ScalarType.Float64), ce, rtol: 1e-4, atol: 1e-5), "CE rows differ");
            expected += (log1.exp() - nn.functional.one_hot(targets, vocab).to(ScalarType.Float64)) * ceScale;
        }
        else Assert.Null(ceRows);
        var got = gradient!.cpu().to(ScalarType.Float64);
        var error = ((got - expected).norm() / expected.norm()).item<double>();
        Assert.True(error < 5e-3, $"gradient relative error {error:e2}");   // bf16 rounding of each element: ~2e-3
        Assert.Equal(ScalarType.BFloat16, gradient.dtype);
    }
}
