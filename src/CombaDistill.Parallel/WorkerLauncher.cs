using System.Diagnostics;
using System.Runtime.InteropServices;

namespace CombaDistill.Runtime.Parallel;

/// <summary>What to start: <see cref="WorldSize"/> copies of one command line, told apart by their environment (<see cref="Worker"/>).</summary>
public sealed record LaunchPlan
{
    public required string Program { get; init; }
    public required IReadOnlyList<string> Arguments { get; init; }
    public required int WorldSize { get; init; }

    /// <summary>Variables for every worker besides the inherited environment and the job's own.</summary>
    public IReadOnlyDictionary<string, string> Environment { get; init; } = new Dictionary<string, string>();

    /// <summary>
    /// After a stop (Ctrl-C, or a worker that stopped for it): how long rank 0 may take to finish its step and save a
    /// checkpoint before it is killed.
    /// </summary>
    public TimeSpan StopGrace { get; init; } = TimeSpan.FromMinutes(10);
}

/// <summary>A worker that ended the job: its rank, exit code and last lines of output (empty for rank 0, whose output is the launcher's).</summary>
public sealed record WorkerExit(int Rank, int ExitCode, IReadOnlyList<string> LastLines);

/// <param name="ExitCode">0 when every worker succeeded; 130 when the job was stopped; else the failing worker's code</param>
/// <param name="Failure">the worker whose failure ended the job, if one did</param>
public sealed record LaunchResult(int ExitCode, WorkerExit? Failure)
{
    public bool Succeeded => ExitCode == 0;
    public bool Stopped => ExitCode == CancelledExitCode;
    public const int CancelledExitCode = 130;

    /// <summary>Exit codes of a worker that stopped when asked to (SIGINT, SIGTERM), as System.CommandLine reports them.</summary>
    public static bool IsStopCode(int code) => code is CancelledExitCode or 143;

    /// <summary>A worker's exit code for "a collective failed" (<see cref="ProcessGroupException"/>): the consequence of another worker's failure rather than its cause.</summary>
    public const int PeerFailureExitCode = 3;
}

/// <summary>
/// Starts the workers of a data-parallel job and supervises them until all have ended. Rank 0 inherits the
/// launcher's standard output and error (its progress and results are the job's); the others' output is captured
/// line by line. One worker's failure ends the job: a rank that is waiting in a collective for a dead peer may never
/// return (NCCL has no timeout), so the launcher kills the rest rather than let them hang. Cancellation is forwarded
/// as SIGTERM, on which the workers agree on a step to stop after and rank 0 saves a checkpoint.
/// </summary>
public static class WorkerLauncher
{
    const int TailLines = 40;

    public static LaunchResult Run(LaunchPlan plan, Action<int, string>? output = null, CancellationToken cancellationToken = default)
    {
        if (plan.WorldSize < 2) throw new ArgumentOutOfRangeException(nameof(plan), "a launched job has at least two workers");
        var rendezvous = Directory.CreateTempSubdirectory("combadistill-rendezvous-").FullName;
        var processes = new Process[plan.WorldSize];
        var tails = Enumerable.Range(0, plan.WorldSize).Select(_ => new Queue<string>()).ToArray();
        try
        {
            for (var rank = 0; rank < plan.WorldSize; rank++)
                processes[rank] = Start(plan, rank, rendezvous, tails[rank], output);
            return Supervise(plan, processes, tails, cancellationToken);
        }
        finally
        {
            foreach (var process in processes.OfType<Process>())
            {
                Kill(process);
                process.WaitForExit();
                process.Dispose();
            }
            try { Directory.Delete(rendezvous, recursive: true); } catch (IOException) { }
        }
    }

    static Process Start(LaunchPlan plan, int rank, string rendezvous, Queue<string> tail, Action<int, string>? output)
    {
        var start = new ProcessStartInfo(plan.Program) { UseShellExecute = false, RedirectStandardOutput = rank != 0, RedirectStandardError = rank != 0 };
        foreach (var argument in plan.Arguments) start.ArgumentList.Add(argument);
        foreach (var (name, value) in plan.Environment) start.Environment[name] = value;
        foreach (var (name, value) in NcclLibrary.SafeDefaults)
            if (!start.Environment.ContainsKey(name)) start.Environment[name] = value;
        start.Environment[Worker.RankVariable] = rank.ToString();
        start.Environment[Worker.WorldSizeVariable] = plan.WorldSize.ToString();
        start.Environment[Worker.RendezvousVariable] = rendezvous;
        start.Environment[Worker.LauncherVariable] = Environment.ProcessId.ToString();
        var process = new Process { StartInfo = start };
        if (rank != 0)
        {
            void Line(object _, DataReceivedEventArgs e)
            {
                if (e.Data is null) return;
                lock (tail)
                {
                    tail.Enqueue(e.Data);
                    if (tail.Count > TailLines) tail.Dequeue();
                }
                output?.Invoke(rank, e.Data);
            }
            process.OutputDataReceived += Line;
            process.ErrorDataReceived += Line;
        }
        process.Start();
        if (rank != 0)
        {
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
        }
        return process;
    }

    static LaunchResult Supervise(LaunchPlan plan, Process[] processes, Queue<string>[] tails, CancellationToken cancellationToken)
    {
        var ended = new bool[processes.Length];
        var killed = new bool[processes.Length];    // by the launcher: their exit codes say nothing about the job
        var clock = Stopwatch.StartNew();
        var killAt = TimeSpan.MaxValue;
        void KillNoLaterThan(TimeSpan after) => killAt = TimeSpan.FromTicks(Math.Min(killAt.Ticks, (clock.Elapsed + after).Ticks));
        var interrupted = false;
        WorkerExit? failure = null;
        int? rootCode = null;
        while (ended.Contains(false))
        {
            if (cancellationToken.IsCancellationRequested && !interrupted)
            {
                interrupted = true;
                foreach (var process in processes.Where((_, r) => !ended[r])) Interrupt(process);
                KillNoLaterThan(plan.StopGrace);
            }
            // Of the workers that ended since the last look, the ones that failed on their own come first: the others
            // may only have seen them go.
            var endedNow = Enumerable.Range(0, processes.Length).Where(r => !ended[r] && processes[r].HasExited).ToList();
            foreach (var rank in endedNow) processes[rank].WaitForExit();    // drains the captured output
            foreach (var rank in endedNow.OrderBy(r => processes[r].ExitCode == LaunchResult.PeerFailureExitCode))
            {
                ended[rank] = true;
                var code = processes[rank].ExitCode;
                if (killed[rank]) continue;
                if (rank == 0)
                {
                    // Rank 0 holds the job's files: once it has failed or stopped, the others have nothing left to do;
                    // once it has succeeded, they are finishing too.
                    rootCode = code;
                    if (code == 0) KillNoLaterThan(FinishGrace);
                    else KillNoLaterThan(TimeSpan.Zero);
                    if (code != 0 && !LaunchResult.IsStopCode(code) && failure is null && !interrupted) failure = new WorkerExit(0, code, []);
                }
                else if (LaunchResult.IsStopCode(code))
                {
                    KillNoLaterThan(plan.StopGrace);    // stopping after an agreed step; rank 0 saves a checkpoint first
                }
                else if (code != 0 && failure is null && rootCode is not 0 && !interrupted)
                {
                    failure = new WorkerExit(rank, code, Tail(tails[rank]));
                    KillNoLaterThan(TimeSpan.Zero);
                }
            }
            if (clock.Elapsed >= killAt)
                for (var rank = 0; rank < processes.Length; rank++)
                    if (!ended[rank] && !killed[rank])
                    {
                        killed[rank] = true;
                        Kill(processes[rank]);
                    }
            Thread.Sleep(50);
        }
        if (failure is not null) return new LaunchResult(failure.ExitCode, failure);
        if (rootCode is 0) return new LaunchResult(0, null);
        return new LaunchResult(LaunchResult.CancelledExitCode, null);
    }

    /// <summary>How long the other ranks may take to exit after rank 0 succeeded.</summary>
    static readonly TimeSpan FinishGrace = TimeSpan.FromSeconds(60);

    static IReadOnlyList<string> Tail(Queue<string> tail)
    {
        lock (tail) return tail.ToArray();
    }

    static void Kill(Process process)
    {
        try { process.Kill(); }
        catch (InvalidOperationException) { }     // it has just exited
    }

    /// <summary>
    /// SIGTERM rather than SIGINT: a process started from a background job inherits SIGINT ignored, and .NET then
    /// leaves it ignored; SIGTERM is handled alike (System.CommandLine cancels the command's token on both).
    /// </summary>
    static void Interrupt(Process process)
    {
        const int SigTerm = 15;
        if (!process.HasExited) kill(process.Id, SigTerm);
    }

    [DllImport("libc.so.6")]
    static extern int kill(int pid, int signal);
}
