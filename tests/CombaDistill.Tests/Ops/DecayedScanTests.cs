using CombaDistill.Ops;
using CombaDistill.Runtime.Cuda;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Ops;

/// <summary>
/// The custom-autograd example: its hand-written backward against autograd through the same expression and
/// against finite differences, in float64; and the gradient hand-off that keeps its returned tensors from leaking.
/// </summary>
public class DecayedScanTests
{
    sealed record Inputs(Tensor X, Tensor G, Tensor? H0, Tensor WeightY, Tensor WeightH) : IDisposable
    {
        public static Inputs Random(long batch, long length, long width, bool withState, ulong seed)
        {
            var gen = new TorchSharp.torch.Generator(seed);
            var f64 = ScalarType.Float64;
            return new Inputs(
                randn([batch, length, width], dtype: f64, generator: gen),
                -nn.functional.softplus(randn([batch, length], dtype: f64, generator: gen)),   // log decay ≤ 0, as in Comba
                withState ? randn([batch, width], dtype: f64, generator: gen) : null,
                randn([batch, length, width], dtype: f64, generator: gen),
                randn([batch, width], dtype: f64, generator: gen));
        }

        public Tensor[] Leaves() => new[] { X, G, H0 }.OfType<Tensor>().Select(t => t.detach().clone().requires_grad_()).ToArray();

        public void Dispose()
        {
            foreach (var t in new[] { X, G, H0, WeightY, WeightH }) t?.Dispose();
        }
    }

    delegate (Tensor Output, Tensor FinalState) Scan(Tensor x, Tensor g, Tensor? h0, double scale);

    /// <summary>Loss = Σ y·W_y (+ Σ h_T·W_h): every output entry weighted differently.</summary>
    static Tensor Loss((Tensor Output, Tensor FinalState) r, Inputs inputs, bool useFinalState) =>
        useFinalState ? (r.Output * inputs.WeightY).sum() + (r.FinalState * inputs.WeightH).sum() : (r.Output * inputs.WeightY).sum();

    static Tensor[] Gradients(Scan scan, Inputs inputs, double scale, bool useFinalState)
    {
        var leaves = inputs.Leaves();
        var h0 = inputs.H0 is null ? null : leaves[2];
        Loss(scan(leaves[0], leaves[1], h0, scale), inputs, useFinalState).backward();
        return leaves.Select(t => t.grad!.detach().clone()).ToArray();
    }

    [Theory]
    [InlineData(true, true)]
    [InlineData(false, true)]
    [InlineData(true, false)]    // final state unused: its gradient reaches backward as materialized zeros
    public void Hand_written_gradients_equal_autograd_through_the_same_expression(bool withState, bool useFinalState)
    {
        using var scope = NewDisposeScope();
        using var inputs = Inputs.Random(2, 9, 3, withState, seed: 11);
        var (y, h) = DecayedScan.Forward(inputs.X, inputs.G, inputs.H0, 0.7);
        var (yRef, hRef) = DecayedScan.Reference(inputs.X, inputs.G, inputs.H0, 0.7);
        Compare.Close(y, yRef, 1e-14, "y");
        Compare.Close(h, hRef, 1e-14, "final state");

        var actual = Gradients(DecayedScan.Forward, inputs, 0.7, useFinalState);
        var expected = Gradients(DecayedScan.Reference, inputs, 0.7, useFinalState);
        Assert.Equal(withState ? 3 : 2, actual.Length);
        string[] names = ["x", "g", "h0"];
        for (int i = 0; i < actual.Length; i++) Compare.Close(actual[i], expected[i], 1e-12, $"d loss / d {names[i]}");
    }

    [Fact]
    public void Hand_written_gradients_equal_central_differences()
    {
        using var scope = NewDisposeScope();
        using var inputs = Inputs.Random(1, 5, 2, withState: true, seed: 5);
        const double scale = 1.3, eps = 1e-6;
        var analytic = Gradients(DecayedScan.Forward, inputs, scale, useFinalState: true);

        var originals = new[] { inputs.X, inputs.G, inputs.H0! };
        for (int which = 0; which < originals.Length; which++)
        {
            var flat = originals[which].flatten();
            var numeric = zeros_like(flat);
            for (long i = 0; i < flat.shape[0]; i++)
            {
                double LossAt(double delta)
                {
                    using var inner = NewDisposeScope();
                    using var _ = no_grad();
                    var shifted = originals.Select(t => t.clone()).ToArray();
                    var view = shifted[which].view(-1);
                    view[i] = view[i] + delta;
                    return Loss(DecayedScan.Forward(shifted[0], shifted[1], shifted[2], scale), inputs, true).item<double>();
                }
                numeric[i] = (LossAt(eps) - LossAt(-eps)) / (2 * eps);
            }
            Compare.Close(analytic[which].flatten(), numeric, 1e-8, $"input {which} against central differences");
        }
    }

    [Fact]
    public void Without_gradients_it_builds_no_graph_and_computes_the_same_values()
    {
        using var scope = NewDisposeScope();
        using var inputs = Inputs.Random(2, 4, 3, withState: true, seed: 3);
        var (y, h) = DecayedScan.Forward(inputs.X, inputs.G, inputs.H0, 2.0);
        Assert.False(y.requires_grad);
        Assert.False(h.requires_grad);
        Compare.Close(y, DecayedScan.Reference(inputs.X, inputs.G, inputs.H0, 2.0).Output, 1e-14, "y");

        var leaves = inputs.Leaves();
        using (no_grad())
        {
            var (yNoGrad, _) = DecayedScan.Forward(leaves[0], leaves[1], leaves[2], 2.0);
            Assert.False(yNoGrad.requires_grad);
        }
    }

    [Fact]
    public void Returned_gradients_are_released_by_the_next_backward_and_the_leaves_keep_theirs()
    {
        using var scope = NewDisposeScope();
        using var inputs = Inputs.Random(2, 6, 3, withState: true, seed: 9);
        GradientHandoff.ReleasePrevious();
        var expected = Gradients(DecayedScan.Reference, inputs, 0.5, useFinalState: true);

        var leaves = inputs.Leaves();
        Loss(DecayedScan.Forward(leaves[0], leaves[1], leaves[2], 0.5), inputs, true).backward();
        var handedOver = GradientHandoff.HeldOnThisThread;     // CPU autograd runs backward on the calling thread
        Assert.Equal(3, handedOver.Count);                    // dx, dg, dh0 (the scale's entry is null)
        Assert.All(handedOver, t => Assert.False(t.IsInvalid));

        // A second backward (another graph) releases the first one's wrappers ...
        var other = inputs.Leaves();
        Loss(DecayedScan.Forward(other[0], other[1], other[2], 0.5), inputs, true).backward();
        Assert.All(handedOver, t => Assert.True(t.IsInvalid));
        Assert.Equal(3, GradientHandoff.HeldOnThisThread.Count);
        GradientHandoff.ReleasePrevious();
        Assert.Empty(GradientHandoff.HeldOnThisThread);

        // ... while libtorch's own references live on in the leaves' gradients.
        for (int i = 0; i < 3; i++)
        {
            Compare.Close(leaves[i].grad!, expected[i], 1e-12, $"first graph, leaf {i}");
            Compare.Close(other[i].grad!, expected[i], 1e-12, $"second graph, leaf {i}");
        }
    }
}
