using System.Diagnostics;
using CombaDistill.Runtime.Cuda;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Runtime;

/// <summary>
/// Where a training step's time goes, phase by phase, read off the device's own timeline without adding a
/// synchronisation. On CUDA each mark records an event on the default stream (where TorchSharp's ops and the kernels
/// run) and the gaps between the events are read when the step ends, by which time the step has waited for its loss
/// anyway. Elsewhere ops run synchronously, so a stopwatch reads the marks. A phase's time is the device time between
/// the previous mark and its own, so the phases of a step add up to the step's time on the device (CPU gaps where the
/// device waits for work to be issued count towards the phase they fall in). A phase marked several times in a step
/// (once per micro-batch) adds up.
/// </summary>
public sealed class StepPhases : IDisposable
{
    readonly CudaDevice? cuda;
    readonly List<(string Phase, CudaEvent? Event, long Ticks)> marks = [];
    readonly Dictionary<string, double> totals = [];
    readonly List<string> order = [];

    public StepPhases(Device device)
    {
        if (device.type != DeviceType.CUDA) return;
        try { cuda = CudaDevice.For(device); }
        catch (Exception e) when (e is CudaUnavailableException or CudaException) { cuda = null; }
    }

    /// <summary>Steps added up since the last <see cref="Clear"/>.</summary>
    public int Steps { get; private set; }

    /// <summary>Marks the start of a step.</summary>
    public void Begin()
    {
        Release();
        Mark("");
    }

    /// <summary>Marks the end of <paramref name="phase"/>, which began at the previous mark. Ignored outside a step.</summary>
    public void Mark(string phase)
    {
        if (phase.Length > 0 && marks.Count == 0) return;
        CudaEvent? e = null;
        if (cuda is not null)
        {
            e = new CudaEvent(cuda);
            e.Record();
        }
        marks.Add((phase, e, Stopwatch.GetTimestamp()));
    }

    /// <summary>Ends the step: waits for its last mark on the device and adds each phase's time to the totals.</summary>
    public void End()
    {
        if (marks.Count < 2) { Release(); return; }
        marks[^1].Event?.Synchronize();
        for (var i = 1; i < marks.Count; i++)
        {
            var (phase, e, ticks) = marks[i];
            var ms = e is not null ? e.MillisecondsSince(marks[i - 1].Event!) : Stopwatch.GetElapsedTime(marks[i - 1].Ticks, ticks).TotalMilliseconds;
            if (!totals.ContainsKey(phase)) order.Add(phase);
            totals[phase] = totals.GetValueOrDefault(phase) + ms;
        }
        Steps++;
        Release();
    }

    /// <summary>Each phase's mean time per step since the last <see cref="Clear"/>, in the order the phases first came.</summary>
    public IReadOnlyList<(string Phase, double MsPerStep)> PerStep() =>
        Steps == 0 ? [] : order.Select(p => (p, totals[p] / Steps)).ToList();

    /// <summary>Forgets the steps added up so far (the warm-up's, say).</summary>
    public void Clear()
    {
        totals.Clear();
        order.Clear();
        Steps = 0;
    }

    void Release()
    {
        foreach (var (_, e, _) in marks) e?.Dispose();
        marks.Clear();
    }

    public void Dispose() => Release();
}
