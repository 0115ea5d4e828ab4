using CombaDistill.Modeling.Comba;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Modeling;

public class TaylorFeatureMapTests
{
    /// <summary>φ(x)·φ(y) is exactly the second-order Taylor polynomial of exp(x·y/√D), for whole batches of head vectors.</summary>
    [Theory]
    [InlineData(2)]
    [InlineData(6)]
    [InlineData(8)]
    [InlineData(16)]
    public void Inner_products_are_the_Taylor_kernel_of_exp(int d)
    {
        using var scope = NewDisposeScope();
        manual_seed(d);
        var x = 3 * randn([2, 3, 5, d], dtype: ScalarType.Float64);
        var y = 3 * randn([2, 3, 5, d], dtype: ScalarType.Float64);
        var (fx, fy) = (TaylorFeatureMap.Apply(x), TaylorFeatureMap.Apply(y));
        Assert.Equal(new long[] { 2, 3, 5, TaylorFeatureMap.Dimension(d) }, fx.shape);
        var s = (x * y).sum(-1) / Math.Sqrt(d);
        var kernel = 1 + s + s.square() / 2;
        Assert.True((fx * fy).sum(-1).allclose(kernel, rtol: 1e-12, atol: 1e-12));
        Assert.True(kernel.min().item<double>() > 0, "the kernel is positive");
    }

    [Fact]
    public void Dimension_is_one_plus_D_plus_the_symmetric_half_of_D_squared()
    {
        Assert.Equal(45, TaylorFeatureMap.Dimension(8));
        Assert.Equal(1 + 128 + 128 * 129 / 2, TaylorFeatureMap.Dimension(128));
        using var scope = NewDisposeScope();
        Assert.Equal(ScalarType.BFloat16, TaylorFeatureMap.Apply(ones(3, 8, dtype: ScalarType.BFloat16)).dtype);
    }
}
