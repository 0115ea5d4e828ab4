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
/// inside the stretch are finalized only after it. Starting one costs one blocking collection of the managed heap,
/// which holds little more than tensor wrappers and token arrays here.
/// </para>
/// </summary>
public static class CollectionPause
{
    /// <summary>Managed bytes the stretch may allocate before the runtime collects anyway (and the pause ends early).</summary>
    public const long Budget = 128L << 20;

    /// <summary>COMBADISTILL_GC_PAUSE=0 turns pauses off (to compare, or should a runtime misbehave with them).</summary>
    public const string EnvironmentVariable = "COMBADISTILL_GC_PAUSE";

    static readonly bool Disabled = Environment.GetEnvironmentVariable(EnvironmentVariable) == "0";

    /// <summary>Pauses collections until the returned scope is disposed; a no-op inside another pause or where the runtime refuses.</summary>
    public static Scope Begin()
    {
        if (Disabled || GCSettings.LatencyMode == GCLatencyMode.NoGCRegion) return default;     // nested: the outer pause covers it
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
