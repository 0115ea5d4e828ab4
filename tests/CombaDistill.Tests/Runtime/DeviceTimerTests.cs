using CombaDistill.Runtime;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Runtime;

public class DeviceTimerTests
{
    [Fact]
    public void The_median_runs_the_warm_up_untimed_then_each_repeat_once_and_at_least_one()
    {
        var timer = DeviceTimer.For(CPU);
        Assert.Equal("wall clock", timer.Description);
        Assert.False(timer.UsesEvents);
        var runs = 0;
        var median = timer.Median(() => runs++, warmup: 2, repeats: 3, TestContext.Current.CancellationToken);
        Assert.Equal(5, runs);
        Assert.True(median >= 0);
        runs = 0;
        timer.Median(() => runs++, warmup: 0, repeats: 0, TestContext.Current.CancellationToken);
        Assert.Equal(1, runs);
    }

    [Fact]
    public void Queued_runs_each_repeat_once_in_order_and_off_CUDA_times_each_on_its_own()
    {
        var order = new List<int>();
        var samples = DeviceTimer.For(CPU).Queued(i => { order.Add(i); Thread.Sleep(i == 1 ? 30 : 1); }, repeats: 3);
        Assert.Equal([0, 1, 2], order);
        Assert.Equal(3, samples.Count);
        Assert.True(samples[1] >= 30 && samples[0] < samples[1], string.Join(", ", samples));   // each sample is its own run's
        Assert.Throws<ArgumentOutOfRangeException>(() => DeviceTimer.For(CPU).Queued(_ => { }, repeats: 0));
    }

    [Fact]
    public void Cancellation_stops_between_runs()
    {
        using var cancel = new CancellationTokenSource();
        var runs = 0;
        Assert.Throws<OperationCanceledException>(() => DeviceTimer.Wall.Median(() => { if (++runs == 2) cancel.Cancel(); }, warmup: 1, repeats: 5, cancel.Token));
        Assert.Equal(2, runs);
    }
}
