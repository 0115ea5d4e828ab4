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
/// (once per micro-batch) adds up; a phase a step leaves out (the update of a step whose loss is not finite) counts
/// as 0 ms in that step, so the per-step means still add up to the mean step.
/// <para>
/// No synchronisation is added: a step's events are read when the next step ends, by which time that step has read
/// its loss back, so the device has passed them; the last step's are read by <see cref="PerStep"/>, after the timing.
/// </para>
/// </summary>
public sealed class StepPhases : IDisposable
{
    readonly CudaDevice? cuda;
    List<(string Phase, CudaEvent? Event, long Ticks)> marks = [];
    List<(string Phase, CudaEvent? Event, long Ticks)> pending = [];   // the last ended step's, not yet read
    readonly Dictionary<string, double> totals = [];
    readonly List<string> order = [];

    public StepPhases(Device device)
    {
        if (device.type != DeviceType.CUDA) return;
        try { cuda = CudaDevice.For(device); }
        catch (Exception e) when (e is CudaUnavailableException or CudaException) { cuda = null; }
    }

    /// <summary>Steps ended since the last <see cref="Clear"/>.</summary>
    public int Steps { get; private set; }

    /// <summary>Marks the start of a step.</summary>
    public void Begin()
    {
        Release(marks);
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

    /// <summary>Ends the step. Its phases are added up once the device has passed them (see the class remarks).</summary>
    public void End()
    {
        Read();
        (pending, marks) = (marks, pending);
        if (pending.Count > 1) Steps++;
        else Release(pending);
    }

    /// <summary>Each phase's mean time per step since the last <see cref="Clear"/>, in the order the phases first came (waits for the last step's phases on the device).</summary>
    public IReadOnlyList<(string Phase, double MsPerStep)> PerStep()
    {
        Read();
        return Steps == 0 ? [] : order.Select(p => (p, totals[p] / Steps)).ToList();
    }

    /// <summary>Forgets the steps ended so far (the warm-up's, say).</summary>
    public void Clear()
    {
        Release(pending);
        totals.Clear();
        order.Clear();
        Steps = 0;
    }

    /// <summary>Adds the pending step's phases to the totals; a no-op wait on the device when it has passed them already.</summary>
    void Read()
    {
        if (pending.Count < 2) { Release(pending); return; }
        pending[^1].Event?.Synchronize();
        for (var i = 1; i < pending.Count; i++)
        {
            var (phase, e, ticks) = pending[i];
            var ms = e is not null ? e.MillisecondsSince(pending[i - 1].Event!) : Stopwatch.GetElapsedTime(pending[i - 1].Ticks, ticks).TotalMilliseconds;
            if (!totals.ContainsKey(phase)) order.Add(phase);
            totals[phase] = totals.GetValueOrDefault(phase) + ms;
        }
        Release(pending);
    }

    static void Release(List<(string Phase, CudaEvent? Event, long Ticks)> list)
    {
        foreach (var (_, e, _) in list) e?.Dispose();
        list.Clear();
    }

    public void Dispose()
    {
        Release(marks);
        Release(pending);
    }
}
