using System.Runtime;

namespace CombaDistill.Runtime;

/// <summary>
/// Holds the .NET garbage collector off for a stretch of libtorch calls (a training step, an evaluation batch).
/// <para>
/// Why: TorchSharp 0.107 hands libtorch a Scalar's or a Tensor's native handle as a bare IntPtr and keeps nothing
/// alive for the length of the call. A Scalar made implicitly (every <c>tensor * 2.0</c>, every <c>add(0.5)</c>) is
/// unreachable once its handle has been read, and its finalizer frees the native value. When a collection started
/// by another thread (a progress bar, a logger, the test runner) lands inside that call, the finalizer can free the
/// value while libtorch reads it. libtorch then fails with "Expected false to be true" (a garbage tag), crashes, or
/// reads a wrong number. tools/ScalarRace reproduces it: with another thread allocating and a small gen-0 budget,
/// 22 of 244,491 scalar ops failed in 20 s; inside pauses, 0 of 335,000 did.
/// </para>
/// <para>
/// A no-GC region makes the runtime collect once at its start, on this thread, between libtorch calls, and not again
/// until it ends, on any thread, unless the stretch allocates more managed memory than the budget. Objects that die
/// inside the stretch are finalized only after it.
/// </para>
/// <para>
/// It is off unless COMBADISTILL_GC_PAUSE=1, because it has a price: on stories260K's alignment stage over 150 steps
/// the peak resident memory rose from 613–630 MB to 827–900 MB, and with a 128 MB budget the throughput fell 17 %
/// (docs/runtime.md). The distill command removes the race's usual trigger instead: its progress bars are redrawn
/// from the training thread, so no other thread allocates while training runs. A collection that the training thread
/// starts itself happens at one of its own allocations, never inside one of its libtorch calls.
/// </para>
/// </summary>
public static class CollectionPause
{
    /// <summary>Managed bytes the stretch may allocate before the runtime collects anyway (and the pause ends early).</summary>
    public const long Budget = 128L << 20;

    /// <summary>COMBADISTILL_GC_PAUSE=1 turns pauses on (for hosts that embed the library beside threads of their own).</summary>
    public const string EnvironmentVariable = "COMBADISTILL_GC_PAUSE";

    /// <summary>Whether <see cref="Begin"/> pauses at all (read once, from <see cref="EnvironmentVariable"/>).</summary>
    public static bool Enabled { get; } = EnvironmentSwitch.IsOn(EnvironmentVariable, whenUnset: false);

    /// <summary>
    /// Where <see cref="Enabled"/>, pauses collections until the returned scope is disposed; a no-op otherwise, inside
    /// another pause, or where the runtime refuses.
    /// </summary>
    public static Scope Begin() => Enabled ? Start() : default;

    /// <summary>Pauses collections until the returned scope is disposed, whatever <see cref="Enabled"/> says.</summary>
    public static Scope Start()
    {
        if (GCSettings.LatencyMode == GCLatencyMode.NoGCRegion) return default;     // nested: the outer pause covers it
        try
        {
            return new Scope(GC.TryStartNoGCRegion(Budget));
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentOutOfRangeException)
        {
            return default;
        }
    }

    public readonly struct Scope(bool started) : IDisposable
    {
        /// <summary>Whether this scope started a pause (false when nested, refused, or default).</summary>
        public bool Started => started;

        public void Dispose()
        {
            // A stretch that outgrew the budget has been collected already, and its region has ended with it.
            if (!started || GCSettings.LatencyMode != GCLatencyMode.NoGCRegion) return;
            try { GC.EndNoGCRegion(); }
            catch (InvalidOperationException) { }
        }
    }
}
