using CombaDistill.Distillation;
using CombaDistill.Tests.Support;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Distillation;

/// <summary>
/// <see cref="FusedGradientNorms"/> against each group's norm taken in float64 by tensor ops: gradients of sizes that
/// fall on and across the kernel's block boundaries (64 Ki elements), an empty one, a parameter without a gradient,
/// a group without any, and one gradient large enough to span many blocks.
/// </summary>
public sealed class FusedGradientNormsTests
{
    [Fact]
    public void On_CUDA_each_groups_norm_matches_float64_tensor_ops()
    {
        Gpu.Require();
        var g = new Generator(31);
        Parameter P(params long[] shape) => new(zeros(shape, device: CUDA));
        Parameter[][] groups =
        [
            [P(65536), P(37), P(3, 70001)],
            [P(0), P(8)],                          // the second never gets a gradient
            [P(8)],                                // no gradients at all
            [P(1 << 22), P(1), P(65535)],
        ];
        foreach (var (p, i) in groups.SelectMany(x => x).Select((p, i) => (p, i)))
            if (!(ReferenceEquals(p, groups[1][1]) || ReferenceEquals(p, groups[2][0])))
                p.grad = (randn(p.shape, generator: g) * (i + 1)).to(CUDA);

        var fused = FusedGradientNorms.Compute(groups);
        Assert.NotNull(fused);
        for (var k = 0; k < groups.Length; k++)
        {
            var grads = groups[k].Where(p => p.grad is not null).Select(p => p.grad!.to(ScalarType.Float64).flatten()).ToArray();
            var expected = grads.Length == 0 ? 0 : cat(grads).norm().item<double>();
            Assert.True(Math.Abs(fused![k] - expected) <= 1e-9 * Math.Max(1, expected), $"group {k}: {fused[k]} against {expected}");
        }
        Assert.Equal(0, fused![2]);
    }

    [Fact]
    public void It_declines_what_it_does_not_take()
    {
        var onCpu = new Parameter(ones(4)) { grad = ones(4) };
        Assert.Null(FusedGradientNorms.Compute([[onCpu]]));
        if (!cuda.is_available()) return;
        var half = new Parameter(ones(4, device: CUDA)) { grad = ones(4, dtype: ScalarType.BFloat16, device: CUDA) };
        Assert.Null(FusedGradientNorms.Compute([[half]]));
    }
}
