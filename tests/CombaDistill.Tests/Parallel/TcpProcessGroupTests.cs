using CombaDistill.Distillation;
using CombaDistill.Runtime.Parallel;
using CombaDistill.Tests.Support;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Parallel;

/// <summary>
/// The CPU process group, its ranks as threads of this process (the sockets between them are real): reductions
/// against sums computed here, broadcasts, and the failures a job must survive without hanging.
/// </summary>
public sealed class TcpProcessGroupTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    /// <summary>Connects <paramref name="world"/> ranks (each connect blocks until all have joined, hence the threads).</summary>
    TcpProcessGroup[] Connect(int world, double timeoutSeconds = 60)
    {
        var rendezvous = new Rendezvous(dir[$"rendezvous-{Guid.NewGuid():N}"], TimeSpan.FromSeconds(timeoutSeconds));
        var ranks = Enumerable.Range(0, world).Select(r => Task.Run(() => TcpProcessGroup.Connect(r, world, rendezvous))).ToArray();
        Task.WaitAll(ranks, TestContext.Current.CancellationToken);
        return ranks.Select(t => t.Result).ToArray();
    }

    /// <summary>Runs <paramref name="body"/> on every rank at once and returns each rank's result (or rethrows the first failure).</summary>
    static T[] OnEveryRank<T>(IReadOnlyList<ProcessGroup> groups, Func<ProcessGroup, T> body)
    {
        var tasks = groups.Select(g => Task.Run(() => body(g))).ToArray();
        Task.WaitAll(tasks, TestContext.Current.CancellationToken);
        return tasks.Select(t => t.Result).ToArray();
    }

    [Fact]
    public void Sums_averages_and_broadcasts_reach_every_rank()
    {
        var groups = Connect(3);
        try
        {
            // rank r holds r + 1 + i·0.25 (float32) and 10^r (float64)
            var results = OnEveryRank(groups, g =>
            {
                using var a = arange(0, 5, ScalarType.Float32) * 0.25f + (g.Rank + 1);
                using var b = full(new long[] { 2, 2 }, Math.Pow(10, g.Rank), ScalarType.Float64);
                using var c = tensor(new long[] { g.Rank, 7 });
                g.AllReduce(a, ReduceOp.Sum);
                g.AllReduce(b, ReduceOp.Average);
                g.AllReduce(c, ReduceOp.Sum);
                using var fromTwo = full(3, g.Rank * 1.5f, ScalarType.Float32);
                g.Broadcast(fromTwo, root: 2);
                return (a.data<float>().ToArray(), b.data<double>().ToArray(), c.data<long>().ToArray(), fromTwo.data<float>().ToArray());
            });
            foreach (var (sum, mean, ints, broadcast) in results)
            {
                Assert.Equal(Enumerable.Range(0, 5).Select(i => 6 + 3 * 0.25f * i), sum);
                Assert.All(mean, v => Assert.Equal(111.0 / 3, v, 12));
                Assert.Equal([3L, 21L], ints);
                Assert.Equal([3f, 3f, 3f], broadcast);
            }
            // every rank got the same bits
            Assert.All(results, r => Assert.Equal(results[0].Item1, r.Item1));
        }
        finally
        {
            foreach (var g in groups) g.Dispose();
        }
    }

    [Fact]
    public void Ranks_that_disagree_on_the_collective_fail_with_a_message()
    {
        var groups = Connect(2);
        var ct = TestContext.Current.CancellationToken;
        var root = Task.Run(() =>
        {
            using var t = zeros(4);
            try { groups[0].AllReduce(t, ReduceOp.Sum); }
            finally { groups[0].Dispose(); }    // as a failing process would: its sockets close
        }, ct);
        var other = Task.Run(() =>
        {
            using var t = zeros(5);
            groups[1].AllReduce(t, ReduceOp.Sum);
        }, ct);
        var e = Assert.Throws<ProcessGroupException>(() => root.GetAwaiter().GetResult());
        Assert.Contains("rank 0 called all-reduce (Sum) of 4 Float32, rank 1 all-reduce (Sum) of 5 Float32", e.Message);
        // rank 1 learns that rank 0 went away (a close, or a reset where its data was left unread)
        var peer = Assert.Throws<ProcessGroupException>(() => other.GetAwaiter().GetResult());
        Assert.Contains("rank 0", peer.Message);
        Assert.Contains("it stopped or failed", peer.Message);
        groups[1].Dispose();
    }

    [Fact]
    public void A_rank_that_stops_fails_the_others_at_once_and_one_that_hangs_after_the_timeout()
    {
        var groups = Connect(3);
        try
        {
            groups[2].Dispose();     // rank 2 exits: the kernel closes its socket
            var waiting = Task.Run(() =>
            {
                using var t = ones(3);
                groups[1].AllReduce(t, ReduceOp.Sum);
            }, TestContext.Current.CancellationToken);
            using (var t = ones(3))
            {
                var e = Assert.Throws<ProcessGroupException>(() => groups[0].AllReduce(t, ReduceOp.Sum));
                // noticed from the closed socket, not after the 60 s timeout
                Assert.Contains("rank 2 closed its connection to rank 0: it stopped or failed", e.Message);
            }
            groups[0].Dispose();
            Assert.Contains("rank 0", Assert.Throws<ProcessGroupException>(() => waiting.GetAwaiter().GetResult()).Message);
        }
        finally
        {
            foreach (var g in groups) g.Dispose();
        }

        // a rank that never calls: rank 0 gives up after the timeout
        var hanging = Connect(2);
        try
        {
            hanging[0].Timeout = TimeSpan.FromSeconds(1);
            using var t = ones(3);
            var e = Assert.Throws<ProcessGroupException>(() => hanging[0].AllReduce(t, ReduceOp.Sum));
            Assert.Contains("heard nothing from rank 1 for 1 s", e.Message);
        }
        finally
        {
            foreach (var g in hanging) g.Dispose();
        }
    }

    [Fact]
    public void A_rank_waiting_for_a_peer_that_never_starts_gives_up()
    {
        var rendezvous = new Rendezvous(dir["empty"], TimeSpan.FromSeconds(0.5));
        Assert.Contains("did rank 0 start?", Assert.Throws<ProcessGroupException>(() => TcpProcessGroup.Connect(1, 2, rendezvous)).Message);
        Assert.Contains("for 1 of 1 ranks to connect", Assert.Throws<ProcessGroupException>(() => TcpProcessGroup.Connect(0, 2, rendezvous)).Message);
    }

    [Fact]
    public void Gradients_are_averaged_in_buckets_and_parameters_broadcast()
    {
        var groups = Connect(2);
        try
        {
            // gradients of 40, 16 and 12 bytes in 64-byte buckets: the first two flattened together (one of them
            // not contiguous), the third reduced in place
            var results = OnEveryRank(groups, g =>
            {
                var r = g.Rank;
                var parameters = new[] { new Parameter(full(10, 1f + r)), new Parameter(full(new long[] { 2, 2 }, 10f * (r + 1))), new Parameter(full(3, -1f)) };
                parameters[0].grad = arange(10, ScalarType.Float32) * (r + 1);
                parameters[1].grad = full(new long[] { 2, 2 }, r == 0 ? 1f : 3f).t();   // transposed: not contiguous after the flat copy
                parameters[2].grad = full(3, r == 0 ? -2f : 4f);
                var averager = new GradientAverager(g, parameters, bucketBytes: 64);
                averager.Average();
                averager.BroadcastParameters();
                return parameters.Select(p => (Values: p.data<float>().ToArray(), Grad: p.grad!.contiguous().data<float>().ToArray())).ToArray();
            });
            foreach (var ps in results)
            {
                Assert.Equal(Enumerable.Range(0, 10).Select(i => i * 1.5f), ps[0].Grad);
                Assert.Equal([2f, 2f, 2f, 2f], ps[1].Grad);
                Assert.Equal([1f, 1f, 1f], ps[2].Grad);
                Assert.Equal(Enumerable.Repeat(1f, 10), ps[0].Values);     // rank 0's weights
                Assert.Equal([10f, 10f, 10f, 10f], ps[1].Values);
            }
        }
        finally
        {
            foreach (var g in groups) g.Dispose();
        }
    }

    [Fact]
    public void The_global_batch_splits_into_equal_shares_or_the_recipe_is_rejected()
    {
        Assert.Equal(new Range(0, 4), DataParallel.Share(8, 0, 2));
        Assert.Equal(new Range(4, 8), DataParallel.Share(8, 1, 2));
        Assert.Equal(new Range(6, 9), DataParallel.Share(12, 2, 4));
        Assert.Equal([4, 2], DataParallel.MicroBatches(6, 4));
        Assert.Equal([2, 2, 2], DataParallel.MicroBatches(6, 2));
        Assert.Equal([1], DataParallel.MicroBatches(1, 8));

        var path = dir["recipe.yaml"];
        File.WriteAllText(path, Distillation.DistillationRunTests.RecipeText().Replace("    accumulation: 2\n", "    accumulation: 3\n"));
        var recipe = RecipeLoader.Load(path);
        DataParallel.Check(recipe, 2);     // align: 2 × 1; kd: 2 × 3
        var e = Assert.Throws<InvalidInputException>(() => DataParallel.Check(recipe, 4));
        Assert.Contains(path, e.Message);
        Assert.Contains("stage 'align': micro_batch × accumulation = 2 sequences per step do not split evenly over 4 workers", e.Message);
    }
}
