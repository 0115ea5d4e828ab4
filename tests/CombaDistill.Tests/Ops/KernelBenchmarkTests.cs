using CombaDistill.Ops;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Ops;

public class KernelBenchmarkTests
{
    static readonly BenchShape First = new(8, 2048, 16, 128);

    [Fact]
    public void Comba_counts_follow_the_chunkwise_form_product_by_product()
    {
        // per head and chunk (C = 64, D = 128): five C²-sized products, three against the state, one inverse
        const double C = 64, D = 128;
        double[] products = [2 * C * C * D, 2 * C * C * D, 2 * C * C * D, 2 * C * C * D, 2 * C * C * D, 2 * C * D * D, 2 * C * D * D, 2 * C * D * D, C * C * C / 3];
        var heads = 8 * 16;
        var chunks = 2048 / 64;
        var forward = KernelWork.CombaForward(First, 64, inputBytes: 2);
        Assert.Equal(heads * chunks * products.Sum(), forward.Flops, 1e-3);
        Assert.Equal(47.6, forward.Flops / 1e9, 1);   // GFLOP

        // bytes: q, k, v and o in bf16; g and β in f32; λ and d (16 f32 each); the f32 final state
        var tokens = 8L * 16 * 2048;
        var expectedBytes = 4 * tokens * 128 * 2 + 2 * tokens * 4 + 2 * 16 * 4 + 8L * 16 * 128 * 128 * 4;
        Assert.Equal(278_921_344, expectedBytes);
        Assert.Equal(expectedBytes, forward.Bytes);

        var both = KernelWork.CombaForwardBackward(First, 64, inputBytes: 2);
        Assert.Equal(3 * forward.Flops, both.Flops, 1e-3);
        var inputs = 3 * tokens * 128 * 2 + 2 * tokens * 4 + 2 * 16 * 4;
        Assert.Equal(expectedBytes + inputs + tokens * 128 * 2 + inputs, both.Bytes);
    }

    [Fact]
    public void A_partial_last_chunk_costs_a_whole_chunk()
    {
        var whole = KernelWork.CombaForward(new BenchShape(1, 128, 1, 64), 64, 2).Flops;
        Assert.Equal(whole, KernelWork.CombaForward(new BenchShape(1, 65, 1, 64), 64, 2).Flops);
        Assert.Equal(whole / 2, KernelWork.CombaForward(new BenchShape(1, 64, 1, 64), 64, 2).Flops, 1e-6);
    }

    [Fact]
    public void Causal_attention_counts_half_the_square_and_FlashAttentions_backward()
    {
        var forward = KernelWork.SdpaForward(First, 2);
        Assert.Equal(4.0 * 8 * 16 * 2048 * 2048 * 128 / 2, forward.Flops);
        Assert.Equal(4.0 * 8 * 16 * 2048 * 128 * 2, forward.Bytes);
        var both = KernelWork.SdpaForwardBackward(First, 2);
        Assert.Equal(3.5 * forward.Flops, both.Flops);
        Assert.Equal(12.0 * 8 * 16 * 2048 * 128 * 2, both.Bytes);
    }

    [Fact]
    public void The_floor_is_the_slower_of_compute_and_memory()
    {
        Assert.Equal(2.0, new Work(2 * 790e9, 1e9).FloorMs(790, 4.3), 12);         // compute-bound: 2 ms of FLOPs, 0.23 ms of bytes
        Assert.Equal(1000.0 * 8.6e9 / 4.3e12, new Work(1e9, 8.6e9).FloorMs(790, 4.3), 12);
        var comba = KernelWork.CombaForward(First, 64, 2);
        Assert.Equal(1000 * comba.Bytes / 4.3e12, comba.FloorMs(790, 4.3), 12);     // Comba forward here: 0.065 ms of bytes, 0.060 ms of FLOPs
    }

    [Fact]
    public void A_run_reports_every_op_with_rates_and_ratios_that_agree_with_its_times()
    {
        var shapes = new[] { new BenchShape(1, 70, 2, 8), new BenchShape(2, 16, 1, 4) };
        var report = KernelBenchmark.Run(CPU, shapes, ScalarType.Float32,
            new KernelBenchOptions { Warmup = 0, Repeats = 2, InputSets = 2, ChunkSize = 16, PeakTflops = 1, PeakTBps = 0.5 },
            cancellation: TestContext.Current.CancellationToken);
        Assert.Equal("wall clock", report.Timing);
        Assert.Contains("cpu is not a CUDA device", report.FusedKernels);
        Assert.Equal(6, report.Results.Count);
        Assert.Equal(["fused", "chunkwise", "sdpa", "fused", "chunkwise", "sdpa"], report.Results.Select(r => r.Op));
        foreach (var r in report.Results)
        {
            Assert.Null(r.Note);
            var sdpa = report.Results.Single(s => s.Shape == r.Shape && s.Op == "sdpa");
            var work = r.Op == "sdpa" ? KernelWork.SdpaForward(r.Shape, 4) : KernelWork.CombaForward(r.Shape, 16, 4);
            Assert.Equal(work.Flops, r.ForwardFlops);
            Assert.Equal(work.Flops / (r.ForwardMs!.Value / 1000) / 1e12, r.ForwardTflops!.Value, 12);
            Assert.Equal(r.ForwardBackwardBytes / (r.ForwardBackwardMs!.Value / 1000) / 1e12, r.ForwardBackwardTBps!.Value, 12);
            Assert.Equal(work.FloorMs(1, 0.5), r.ForwardFloorMs, 15);
            Assert.Equal(r.ForwardMs.Value / r.ForwardFloorMs, r.ForwardTimesFloor!.Value, 9);
            Assert.Equal(r.ForwardBackwardMs.Value / sdpa.ForwardBackwardMs!.Value, r.ForwardBackwardTimeRatioToSdpa!.Value, 12);
            // wall-clock timing already holds the host's time: no separate host column
            Assert.Null(r.ForwardHostMs);
            Assert.Null(r.ForwardBackwardHostMs);
        }
    }

    [Fact]
    public void Forward_only_and_a_subset_of_ops()
    {
        var report = KernelBenchmark.Run(CPU, [new BenchShape(1, 20, 1, 4)], ScalarType.Float32,
            new KernelBenchOptions { Warmup = 0, Repeats = 1, InputSets = 1, ChunkSize = 16, Ops = ["chunkwise"], Backward = false },
            cancellation: TestContext.Current.CancellationToken);
        var only = Assert.Single(report.Results);
        Assert.Equal("chunkwise", only.Op);
        Assert.True(only.ForwardMs > 0);
        Assert.Null(only.ForwardBackwardMs);
        Assert.Null(only.ForwardTimeRatioToSdpa);     // no SDPA in this run to compare with
        Assert.Contains("'flash'", Assert.Throws<ArgumentException>(() =>
            KernelBenchmark.Run(CPU, [new BenchShape(1, 20, 1, 4)], ScalarType.Float32, new KernelBenchOptions { Ops = ["flash"] }, cancellation: TestContext.Current.CancellationToken)).Message);
    }

    [Fact]
    public void Benchmark_inputs_are_random_never_zero_and_require_the_gradients_asked_for()
    {
        using var scope = NewDisposeScope();
        var x = CombaBenchInputs.Random(new BenchShape(2, 30, 3, 8), ScalarType.Float32, CPU, requiresGrad: true, gatesRequireGrad: true);
        var y = CombaBenchInputs.Random(new BenchShape(2, 30, 3, 8), ScalarType.Float32, CPU, requiresGrad: true);
        Assert.All(x.All.Take(7), t => Assert.True(t.requires_grad));
        Assert.All(y.All.Skip(3).Take(4), t => Assert.False(t.requires_grad));
        Assert.All(x.All.Zip(y.All), p => Assert.False(p.First.equal(p.Second).all().item<bool>()));
        Assert.True((x.G < 0).all().item<bool>());
        Assert.True(((x.Beta >= 0) & (x.Beta < 1)).all().item<bool>());
        Assert.All(x.All, t => Assert.True(t.count_nonzero().item<long>() > 0));
    }
}
