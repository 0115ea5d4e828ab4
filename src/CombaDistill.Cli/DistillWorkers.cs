using System.Diagnostics;
using System.Reflection;
using CombaDistill.Distillation;
using CombaDistill.Runtime;
using CombaDistill.Runtime.Parallel;
using Spectre.Console;
using static TorchSharp.torch;

namespace CombaDistill.Cli;

/// <summary>
/// <c>distill --gpus N</c> / <c>--workers N</c>: this process becomes the launcher and starts N copies of its own
/// command line, told apart by their environment (<see cref="Worker"/>); each copy is one rank of the job.
/// </summary>
static class DistillWorkers
{
    /// <summary>How many processes, and which devices each one uses.</summary>
    public sealed record Layout(int WorldSize, bool OnGpus, int TeacherGpus, string DeviceSpec)
    {
        public static Layout From(int? gpus, int? workers, int? teacherGpus, string? device)
        {
            if (gpus is not null && workers is not null) throw new ArgumentException("--gpus and --workers exclude each other: --gpus N for N GPUs, --workers N for N CPU processes");
            foreach (var (name, value) in new[] { ("--gpus", gpus), ("--workers", workers), ("--teacher-gpus", teacherGpus) })
                if (value is < 1) throw new ArgumentException($"{name} is {value}; expected a positive number");
            var spec = (device ?? "auto").Trim().ToLowerInvariant();
            if (gpus is not null && spec is not ("auto" or "cuda"))
                throw new ArgumentException($"--gpus {gpus} runs on cuda:0 … cuda:{gpus - 1} (pick the GPUs with CUDA_VISIBLE_DEVICES); leave out --device {device}");
            if (workers is not null && spec is not ("auto" or "cpu"))
                throw new ArgumentException($"--workers {workers} starts CPU processes; for GPUs use --gpus");
            if (teacherGpus is > 1 && (workers is not null || spec == "cpu"))
                throw new ArgumentException("--teacher-gpus splits the teacher over GPUs; it needs --gpus or a CUDA --device");
            return new Layout(gpus ?? workers ?? 1, gpus is not null, teacherGpus ?? 1, workers is not null ? "cpu" : spec);
        }

        /// <summary>Rank r's student: with --gpus, GPU r·K (K = --teacher-gpus); otherwise --device.</summary>
        public Device StudentDevice(int rank)
        {
            if (OnGpus) return Runtime.DeviceSpec.Resolve($"cuda:{rank * TeacherGpus}");
            var device = Runtime.DeviceSpec.Resolve(DeviceSpec);
            if (TeacherGpus > 1 && device.type != TorchSharp.DeviceType.CUDA) throw new ArgumentException("--teacher-gpus needs CUDA; this run is on the CPU");
            return device;
        }

        /// <summary>The GPUs rank r splits its teacher over: its student's and the K − 1 after it; null for an unsplit teacher.</summary>
        public IReadOnlyList<Device>? TeacherDevices(int rank)
        {
            if (TeacherGpus == 1) return null;
            var first = Math.Max(0, StudentDevice(rank).index);
            return Enumerable.Range(first, TeacherGpus).Select(i => Runtime.DeviceSpec.Resolve($"cuda:{i}")).ToArray();
        }

        /// <summary>CPU workers share the cores; libtorch's default (all of them, in each process) would oversubscribe them.</summary>
        public int? DefaultThreads => !OnGpus && WorldSize > 1 ? Math.Max(1, Environment.ProcessorCount / WorldSize) : null;
    }

    /// <summary>Starts the workers and waits for them; returns the job's exit code.</summary>
    public static int Launch(Layout layout, CancellationToken ct)
    {
        var (program, arguments) = SameCommandLine();
        var plan = new LaunchPlan { Program = program, Arguments = arguments, WorldSize = layout.WorldSize };
        var where = layout.OnGpus ? $"cuda:0 … cuda:{layout.WorldSize * layout.TeacherGpus - 1}" : "the CPU";
        CliCommon.Err.MarkupLineInterpolated($"[grey]starting {layout.WorldSize} workers on {where}; rank 0 reports, the others' messages are marked [[rank N]][/]");
        var run = Task.Run(() => WorkerLauncher.Run(plan, (rank, line) => CliCommon.Err.MarkupLineInterpolated($"[grey][[rank {rank}]][/] {line}"), ct), CancellationToken.None);
        // As for a single process (DistillCommand): on Ctrl-C the process waits at exit until the workers have stopped and saved.
        EventHandler waitForWorkers = (_, _) => run.Wait();
        AppDomain.CurrentDomain.ProcessExit += waitForWorkers;
        try
        {
            var result = run.GetAwaiter().GetResult();
            if (result.Failure is { } failure)
            {
                var pointer = failure.Rank == 0 ? "" : $" (its messages are above, marked [rank {failure.Rank}])";
                CliCommon.Err.MarkupLineInterpolated($"[red]error:[/] worker {failure.Rank} exited with code {failure.ExitCode}; the other workers were stopped{pointer}");
            }
            else if (result.Stopped)
                CliCommon.Err.MarkupLine("[yellow]cancelled[/]");
            return result.ExitCode;
        }
        finally
        {
            AppDomain.CurrentDomain.ProcessExit -= waitForWorkers;
        }
    }

    /// <summary>One rank: joins the job's process group, then runs the recipe; rank 0 shows progress and the summary.</summary>
    public static int RunWorker(Worker worker, Recipe recipe, string runDir, DistillOptions options, CancellationToken ct)
    {
        worker.WatchLauncher(() =>
        {
            Console.Error.WriteLine($"error: rank {worker.Rank}: the launcher (pid {worker.LauncherPid}) is gone; stopping");
            Process.GetCurrentProcess().Kill();
        });
        var group = worker.Join(options.Device ?? CPU);
        try
        {
            options = options with { Group = group };
            if (worker.Rank == 0) DistillCommand.PrintSummary(DistillCommand.RunWithProgress(recipe, runDir, options, ct), options);
            else RunQuietly(recipe, runDir, options, ct);
        }
        catch
        {
            group.Abort();      // a peer may be gone: waiting for it to finish its collectives would hang
            throw;
        }
        group.Dispose();
        return 0;
    }

    /// <summary>Ranks other than 0: no progress display; as for rank 0, the process waits at exit until the run has stopped.</summary>
    static void RunQuietly(Recipe recipe, string runDir, DistillOptions options, CancellationToken ct)
    {
        var run = Task.Run(() => DistillationRun.Run(recipe, runDir, options, new WarningsOnly(), ct), CancellationToken.None);
        EventHandler waitForRun = (_, _) => run.Wait();
        AppDomain.CurrentDomain.ProcessExit += waitForRun;
        try
        {
            run.GetAwaiter().GetResult();
        }
        finally
        {
            AppDomain.CurrentDomain.ProcessExit -= waitForRun;
        }
    }

    /// <summary>This process's own program and arguments: the dotnet host and the CLI assembly, or the installed tool.</summary>
    static (string Program, IReadOnlyList<string> Arguments) SameCommandLine()
    {
        var program = Environment.ProcessPath ?? throw new InvalidOperationException("the path of this process's program is unknown");
        var arguments = Environment.GetCommandLineArgs().Skip(1).ToList();
        if (Path.GetFileNameWithoutExtension(program) == "dotnet") arguments.Insert(0, Assembly.GetEntryAssembly()!.Location);
        return (program, arguments);
    }

    /// <summary>Ranks other than 0 report only warnings (rank 0 reports the same notes and progress).</summary>
    sealed class WarningsOnly : IProgress<DistillationProgress>
    {
        public void Report(DistillationProgress p)
        {
            if (p.IsWarning && p.Note is not null) Console.Error.WriteLine($"warning: {p.Note}");
        }
    }
}
