using CombaDistill.Conversion;
using CombaDistill.IO;
using CombaDistill.Modeling.Llama;
using CombaDistill.Runtime.Parallel;
using CombaDistill.Tests.Support;
using CombaDistill.Tokenization;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Parallel;

/// <summary>
/// The GPU lane for several GPUs: the NCCL binding (ranks as threads of this process, one GPU each, as NCCL allows)
/// against sums computed here, and a teacher split over two GPUs against the same teacher on one. Tests that need two
/// GPUs skip on a machine with fewer.
/// </summary>
public sealed class NcclGpuTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    static void RequireGpus(int count)
    {
        Gpu.Require();
        Assert.SkipWhen(cuda.device_count() < count, $"needs {count} CUDA devices; this machine has {cuda.device_count()}");
    }

    static Device Cuda(int index) => new(TorchSharp.DeviceType.CUDA, index);

    static T[] OnEveryRank<T>(NcclProcessGroup[] groups, Func<NcclProcessGroup, T> body)
    {
        var tasks = groups.Select(g => Task.Factory.StartNew(() => body(g), TestContext.Current.CancellationToken, TaskCreationOptions.LongRunning, TaskScheduler.Default)).ToArray();
        Task.WaitAll(tasks, TestContext.Current.CancellationToken);
        return tasks.Select(t => t.Result).ToArray();
    }

    [Fact]
    public void NCCL_loads_from_PyTorch_and_one_rank_reduces_to_itself()
    {
        RequireGpus(1);
        Assert.InRange(NcclLibrary.Version, 21200, 99999);
        Assert.EndsWith("libnccl.so.2", NcclLibrary.Path);
        var groups = NcclProcessGroup.CreateInThreads([Cuda(0)], dir["rendezvous"], TimeSpan.FromMinutes(2));
        try
        {
            var (sum, mean, bf16) = OnEveryRank(groups, g =>
            {
                using var a = arange(6, ScalarType.Float32, Cuda(0)) + 0.5f;
                using var b = arange(6, ScalarType.Float64, Cuda(0));
                using var c = full(4, 1.5, ScalarType.BFloat16, Cuda(0));
                g.AllReduce(a, ReduceOp.Sum);
                g.AllReduce(b, ReduceOp.Average);
                g.AllReduce(c, ReduceOp.Sum);
                g.Broadcast(a, 0);
                return (a.cpu().data<float>().ToArray(), b.cpu().data<double>().ToArray(), c.cpu().to(ScalarType.Float32).data<float>().ToArray());
            })[0];
            Assert.Equal([0.5f, 1.5f, 2.5f, 3.5f, 4.5f, 5.5f], sum);
            Assert.Equal([0.0, 1, 2, 3, 4, 5], mean);
            Assert.Equal([1.5f, 1.5f, 1.5f, 1.5f], bf16);
        }
        finally
        {
            foreach (var g in groups) g.Dispose();
        }
    }

    [Fact]
    public void Two_GPUs_sum_average_and_broadcast_through_NCCL()
    {
        RequireGpus(2);
        var groups = NcclProcessGroup.CreateInThreads([Cuda(0), Cuda(1)], dir["rendezvous"], TimeSpan.FromMinutes(2));
        try
        {
            const long n = 3_000_001;     // large enough for NCCL's pipelined protocols, odd so no chunk is even
            var results = OnEveryRank(groups, g =>
            {
                var device = g.Device;
                using var scope = NewDisposeScope();
                // rank r holds (r + 1)·i (float32), 2^r (bf16, exact), r·10 (float64, averaged)
                var a = arange(n, ScalarType.Float32, device) * (g.Rank + 1);
                var b = full(8, Math.Pow(2, g.Rank), ScalarType.BFloat16, device);
                var c = full(5, g.Rank * 10.0, ScalarType.Float64, device);
                var d = full(3, g.Rank + 7f, ScalarType.Float32, device);
                g.AllReduce(a, ReduceOp.Sum);
                g.AllReduce(b, ReduceOp.Sum);
                g.AllReduce(c, ReduceOp.Average);
                g.Broadcast(d, root: 1);
                var expected = arange(n, ScalarType.Float32, device) * 3;
                return (MaxError: (a - expected).abs().max().item<float>(), Device: a.device.ToString(),
                    B: b.cpu().to(ScalarType.Float32).data<float>().ToArray(), C: c.cpu().data<double>().ToArray(), D: d.cpu().data<float>().ToArray());
            });
            Assert.Equal(["cuda:0", "cuda:1"], results.Select(r => r.Device));
            foreach (var r in results)
            {
                Assert.Equal(0f, r.MaxError);        // integers below 2^24: exact in float32
                Assert.All(r.B, v => Assert.Equal(3f, v));
                Assert.All(r.C, v => Assert.Equal(5.0, v));
                Assert.All(r.D, v => Assert.Equal(8f, v));
            }
            Assert.Throws<ArgumentException>(() => groups[0].AllReduce(zeros(2, device: Cuda(1)), ReduceOp.Sum));
        }
        finally
        {
            foreach (var g in groups) g.Dispose();
        }
    }

    [Fact]
    public void A_teacher_split_over_two_GPUs_gives_the_logits_of_the_whole_one()
    {
        RequireGpus(2);
        var ct = TestContext.Current.CancellationToken;
        Llama2cImporter.Import(Shared.Stories260KBin, Shared.Tok512Bin, dir["teacher"], force: false, cancellationToken: ct);
        var tokenizer = TokenizerLoader.Load(dir["teacher"]);
        var ids = tokenizer.Encode(File.ReadAllText(Shared.TinyStoriesValid)[..4000], addBos: true).Take(256).Select(i => (long)i).ToArray();
        using var whole = LlamaForCausalLM.FromPretrained(dir["teacher"], ScalarType.Float32, Cuda(0));
        var placement = LayerPlacement.Balanced(whole.Config.NumHiddenLayers, Cuda(0), [Cuda(0), Cuda(1)]);
        using var split = LlamaForCausalLM.FromPretrained(dir["teacher"], ScalarType.Float32, placement);
        Assert.Equal("cuda:1", split.model.layers[^1].self_attn.q_proj.weight!.device.ToString());
        Assert.Equal("cuda:0", split.model.layers[0].self_attn.q_proj.weight!.device.ToString());
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var input = tensor(ids, [2, 128], device: Cuda(0));
        var expected = whole.forward(input);
        var actual = split.forward(input);
        Assert.Equal("cuda:0", actual.device.ToString());
        Assert.True(actual.allclose(expected, rtol: 1e-5, atol: 1e-5), $"largest difference {(actual - expected).abs().max().item<float>()}");
    }
}
