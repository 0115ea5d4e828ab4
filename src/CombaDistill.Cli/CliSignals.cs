using System.Runtime.InteropServices;

namespace CombaDistill.Cli;

/// <summary>
/// SIGINT and SIGTERM for the whole process. The first cancels <see cref="Token"/>; the command then has
/// <see cref="Grace"/> to return before the process exits with 130 (a distillation holds the exit until its
/// checkpoint is saved, DistillCommand). Any further signal is acknowledged on standard error and otherwise ignored:
/// GNU timeout and impatient users send two, and the second must neither crash nor cut a save short
/// (SIGKILL still ends the process at once, and every write is atomic).
/// </summary>
sealed class CliSignals : IDisposable
{
    public static readonly TimeSpan Grace = TimeSpan.FromSeconds(2);

    readonly CancellationTokenSource cancel = new();
    readonly PosixSignalRegistration[] registrations;
    int received;
    Timer? exitTimer;

    public CliSignals() => registrations = [PosixSignalRegistration.Create(PosixSignal.SIGINT, Handle), PosixSignalRegistration.Create(PosixSignal.SIGTERM, Handle)];

    public CancellationToken Token => cancel.Token;

    void Handle(PosixSignalContext context)
    {
        context.Cancel = true;   // the default action (ending the process at once) is never taken
        if (Interlocked.Increment(ref received) > 1)
        {
            try { Console.Error.WriteLine($"{context.Signal} again: already stopping, please wait"); } catch (IOException) { }
            return;
        }
        try { cancel.Cancel(); }
        catch (AggregateException) { }   // a registration's callback failing must not take the handler down
        exitTimer = new Timer(_ => Environment.Exit(130), null, Grace, Timeout.InfiniteTimeSpan);
    }

    public void Dispose()
    {
        exitTimer?.Dispose();
        // Once a signal has come, the process is on its way out: the handlers stay until it is gone, so that a second
        // signal during the runtime's shutdown is acknowledged and ignored, not given its default action (exit 143)
        if (Volatile.Read(ref received) > 0) return;
        foreach (var r in registrations) r.Dispose();
    }
}
