using System.Diagnostics;
using CombaDistill.Runtime.Cuda;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Runtime;

/// <summary>
/// The benchmarks' one clock. It times the device work a callback queues: on a CUDA device, between two CUDA events
/// on the default stream (where TorchSharp's ops and our kernels run) where the driver is usable; elsewhere, and where
/// it is not, the wall clock between two synchronisations. On the CPU the wall clock is all there is.
/// </summary>
public sealed class DeviceTimer
{
    readonly Device device;
    readonly CudaDevice? events;

    DeviceTimer(Device device, CudaDevice? events, string description) => (this.device, this.events, Description) = (device, events, description);

    /// <summary>How it measures, for the report: "CUDA events on the default stream" or "wall clock …".</summary>
    public string Description { get; }

    /// <summary>Whether it times with CUDA events (false: the wall clock between synchronisations).</summary>
    public bool UsesEvents => events is not null;

    /// <summary>A wall clock for host-side work (reads, writes, conversions).</summary>
    public static DeviceTimer Wall { get; } = new(CPU, null, "wall clock");

    public static DeviceTimer For(Device device)
    {
        if (device.type != DeviceType.CUDA) return new DeviceTimer(device, null, "wall clock");
        try { return new DeviceTimer(device, CudaDevice.For(device), "CUDA events on the default stream"); }
        catch (Exception e) when (e is CudaUnavailableException or CudaException)
        {
            return new DeviceTimer(device, null, $"wall clock after cuda.synchronize (CUDA events unavailable: {e.Message.Split('\n')[0]})");
        }
    }

    /// <summary>Milliseconds the work took, from a synchronised start to the end of everything it queued.</summary>
    public double Measure(Action work)
    {
        if (events is null)
        {
            Synchronize(device);
            var watch = Stopwatch.StartNew();
            work();
            Synchronize(device);
            return watch.Elapsed.TotalMilliseconds;
        }
        using var start = new CudaEvent(events);
        using var end = new CudaEvent(events);
        start.Record();
        work();
        end.Record();
        end.Synchronize();
        return end.MillisecondsSince(start);
    }

    /// <summary>
    /// Milliseconds of each of <paramref name="repeats"/> runs of <paramref name="work"/> (given the run's index), timed
    /// as triton's <c>do_bench</c> times the peers: every run is queued behind the previous one without waiting for
    /// it, after a write of <paramref name="flushBytes"/> bytes that evicts the L2 cache, between two CUDA events of its
    /// own; one synchronisation at the end. The host runs ahead of the device as it does in training, so a run's host
    /// time (launches, allocations) shows only where it exceeds the device's. Without CUDA events, each run is a
    /// <see cref="Measure"/> (synchronised before and after).
    /// </summary>
    public List<double> Queued(Action<int> work, int repeats, long flushBytes = 256L << 20)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(repeats, 1);
        if (events is null) return [.. Enumerable.Range(0, repeats).Select(i => Measure(() => work(i)))];
        var marks = new List<CudaEvent>(2 * repeats);
        try
        {
            for (var i = 0; i < 2 * repeats; i++) marks.Add(new CudaEvent(events));
            using var flush = empty(flushBytes, ScalarType.Int8, device);
            Synchronize(device);
            for (var i = 0; i < repeats; i++)
            {
                flush.zero_();
                marks[2 * i].Record();
                work(i);
                marks[2 * i + 1].Record();
            }
            marks[^1].Synchronize();
            return [.. Enumerable.Range(0, repeats).Select(i => (double)marks[2 * i + 1].MillisecondsSince(marks[2 * i]))];
        }
        finally
        {
            foreach (var mark in marks) mark.Dispose();
        }
    }

    /// <summary>The median of <paramref name="repeats"/> measurements (at least one), after <paramref name="warmup"/> untimed runs.</summary>
    public double Median(Action work, int warmup, int repeats, CancellationToken cancellationToken = default)
    {
        for (var i = 0; i < warmup; i++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            work();
        }
        var samples = new List<double>();
        for (var i = 0; i < Math.Max(1, repeats); i++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            samples.Add(Measure(work));
        }
        return Statistics.Median(samples);
    }

    /// <summary>Waits for the device's queued work (a no-op off CUDA).</summary>
    public static void Synchronize(Device device)
    {
        if (device.type == DeviceType.CUDA) cuda.synchronize(device);
    }
}
