using System.CommandLine;
using CombaDistill.Distillation;
using CombaDistill.IO;
using CombaDistill.Runtime;
using CombaDistill.Runtime.Parallel;
using Spectre.Console;

namespace CombaDistill.Cli;

/// <summary>
/// <c>distill</c>: runs a recipe in a run folder with a live progress bar per stage on standard error, and prints the
/// summary table on standard output. Ctrl-C finishes the current step, saves a checkpoint and exits; <c>--resume</c>
/// continues. <c>--prepare</c>, <c>--shard I/N</c> and <c>--merge-shards</c> split an alignment stage into independent
/// jobs (docs/multi-gpu.md). <c>--gpus N</c> (or <c>--workers N</c> on the CPU) runs it data-parallel in N processes of
/// this same command line (<see cref="DistillWorkers"/>, docs/data-parallel.md).
/// </summary>
static class DistillCommand
{
    public static Command Create()
    {
        var recipe = new Option<string>("--recipe") { Description = "recipe YAML file (schema: docs/recipes.md)", Required = true };
        var runDir = new Option<string>("--run-dir") { Description = "folder for this run: checkpoints, metrics, plots, the final student", Required = true };
        var resume = new Option<bool>("--resume") { Description = "continue the run in --run-dir from its newest intact checkpoint" };
        var stage = new Option<string?>("--stage") { Description = "run only this stage (its predecessor's result must be in --run-dir)" };
        var noTensorBoard = new Option<bool>("--no-tensorboard") { Description = "do not write TensorBoard event files" };
        var validateOnly = new Option<bool>("--validate") { Description = "check the recipe and --run-dir, and exit" };
        var threads = CliCommon.ThreadsOption();
        var prepare = new Option<bool>("--prepare") { Description = "set --run-dir up (recipe copy, teacher import, conversion, tokenized data) and exit; run it once before shard jobs" };
        var shard = new Option<string?>("--shard")
        {
            Description = "with --stage ALIGN: train only shard I/N of the stage's layers, as one of N independent jobs (0 ≤ I < N); merge them with --merge-shards",
        };
        var merge = new Option<bool>("--merge-shards") { Description = "with --stage ALIGN: make the stage's result from its N finished shards" };
        var gpus = new Option<int?>("--gpus") { Description = "data-parallel over N GPUs: N processes, one per GPU (cuda:0 … cuda:N−1), with the recipe's global batch split between them (docs/data-parallel.md)" };
        var workers = new Option<int?>("--workers") { Description = "data-parallel over N CPU processes (--device cpu), reducing over loopback TCP" };
        var teacherGpus = new Option<int?>("--teacher-gpus") { Description = "split the teacher by layer over K GPUs per process, for a teacher too large for one: the process's student GPU and the K−1 after it" };
        var command = new Command("distill", "Distill a teacher into a Comba student, stage by stage, as a recipe says")
        {
            recipe, runDir, resume, stage, noTensorBoard, validateOnly, threads, prepare, shard, merge, gpus, workers, teacherGpus,
        };
        command.SetAction(CliCommon.Run((parse, ct) =>
        {
            // The recipe is checked before anything else starts, the native runtime included.
            var loaded = RecipeLoader.Load(parse.GetValue(recipe)!);
            var layout = DistillWorkers.Layout.From(parse.GetValue(gpus), parse.GetValue(workers), parse.GetValue(teacherGpus), parse.GetValue(CliCommon.DeviceOption));
            DataParallel.Check(loaded, layout.WorldSize);
            OutputPath.RequireFolder(parse.GetValue(runDir)!, "--run-dir");
            if (parse.GetValue(validateOnly))
            {
                CliCommon.Err.MarkupLineInterpolated($"[green]ok:[/] {loaded.SourcePath}: {loaded.Stages.Count} stage(s), {loaded.Stages.Sum(s => s.TotalSteps * s.TokensPerStep):N0} training tokens");
                return 0;
            }
            var layerShard = parse.GetValue(shard) is { } text ? LayerShard.Parse(text) : (LayerShard?)null;
            if (layout.WorldSize > 1 && (layerShard is not null || parse.GetValue(merge) || parse.GetValue(prepare)))
                throw new ArgumentException("--prepare, --shard and --merge-shards run as single processes; give each shard job its own GPU instead of --gpus/--workers (docs/multi-gpu.md)");
            var worker = Worker.FromEnvironment();
            if (worker is null && layout.WorldSize > 1) return DistillWorkers.Launch(layout, ct);
            if (worker is not null && worker.WorldSize != layout.WorldSize)
                throw new ArgumentException($"this worker was started as rank {worker.Rank} of {worker.WorldSize}, but its command line asks for {layout.WorldSize} processes");

            TorchRuntime.Initialize(parse.GetValue(CliCommon.LibTorchOption));
            var rank = worker?.Rank ?? 0;
            var device = layout.StudentDevice(rank);
            CliCommon.SetThreads(parse.GetValue(threads) ?? layout.DefaultThreads);
            if (parse.GetValue(prepare))
            {
                DistillationRun.Prepare(loaded, parse.GetValue(runDir)!, new Reporter(loaded, []), ct);
                CliCommon.Err.MarkupLineInterpolated($"[green]prepared:[/] {Path.GetFullPath(parse.GetValue(runDir)!)}");
                return 0;
            }
            var options = new DistillOptions
            {
                Resume = parse.GetValue(resume), OnlyStage = parse.GetValue(stage), Device = device, TensorBoard = !parse.GetValue(noTensorBoard),
                Shard = layerShard, MergeShards = parse.GetValue(merge), TeacherDevices = layout.TeacherDevices(rank),
            };
            if (worker is not null) return DistillWorkers.RunWorker(worker, loaded, parse.GetValue(runDir)!, options, ct);
            var summary = RunWithProgress(loaded, parse.GetValue(runDir)!, options, ct);
            PrintSummary(summary, options);
            return 0;
        }));
        return command;
    }


    public static RunSummary RunWithProgress(Recipe recipe, string runDir, DistillOptions options, CancellationToken ct)
    {
        RunSummary? summary = null;
        var run = Task.CompletedTask;
        // A cancelled command has CliSignals.Grace before the process ends; a checkpoint of a large model can
        // take longer, so the process waits at exit until the run has saved.
        EventHandler waitForSave = (_, _) => run.Wait();
        AppDomain.CurrentDomain.ProcessExit += waitForSave;
        try
        {
            // No refresh thread: the bars are redrawn from the training thread (Reporter), so that no other thread
            // allocates while libtorch runs and starts a collection inside one of its calls (Runtime/CollectionPause).
            CliCommon.Err.Progress()
                .AutoRefresh(false)
                .AutoClear(false)
                .HideCompleted(false)
                .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn(), new SpinnerColumn())
                .Start(context =>
                {
                    var bars = recipe.Stages.Select((s, i) => context.AddTask($"{i + 1:D2}-{s.Name}", autoStart: false, maxValue: s.TotalSteps * s.TokensPerStep)).ToArray();
                    var progress = new Reporter(recipe, bars, context);
                    run = Task.Run(() => summary = DistillationRun.Run(recipe, runDir, options, progress, ct), CancellationToken.None);
                    run.GetAwaiter().GetResult();
                });
        }
        finally
        {
            AppDomain.CurrentDomain.ProcessExit -= waitForSave;
        }
        return summary!;
    }

    /// <summary>Reports on the training thread: updates the stage's bar, prints notes and warnings above the bars.</summary>
    sealed class Reporter(Recipe recipe, ProgressTask[] bars, ProgressContext? context = null) : IProgress<DistillationProgress>
    {
        readonly System.Diagnostics.Stopwatch sinceRedraw = System.Diagnostics.Stopwatch.StartNew();

        public void Report(DistillationProgress p)
        {
            if (p.Note is not null)
            {
                if (p.IsWarning) CliCommon.Err.MarkupLineInterpolated($"[yellow]warning:[/] {p.Note}");
                else CliCommon.Err.MarkupLineInterpolated($"[grey]{p.Note}[/]");
                Redraw(force: true);
                return;
            }
            var bar = bars[p.StageIndex];
            if (!bar.IsStarted) bar.StartTask();
            bar.Value = p.Tokens;
            var stage = recipe.Stages[p.StageIndex];
            bar.Description = $"{p.StageIndex + 1:D2}-{Markup.Escape(stage.Name)} step {p.Step}/{p.TotalSteps} {p.Tokens:N0} tok " +
                $"{p.TokensPerSecond:N0} tok/s loss {p.Loss:G4} lr {p.LearningRate:0.0e0}" + (p.Eta is { } eta ? $" eta {eta:hh\\:mm\\:ss}" : "");
            if (p.Step == p.TotalSteps) bar.StopTask();
            Redraw(force: p.Step == p.TotalSteps);
        }

        /// <summary>At most ten redraws a second, on this (the training) thread.</summary>
        void Redraw(bool force)
        {
            if (context is null || (!force && sinceRedraw.ElapsedMilliseconds < 100)) return;
            context.Refresh();
            sinceRedraw.Restart();
        }
    }

    public static void PrintSummary(RunSummary summary, DistillOptions? options = null)
    {
        var table = new Table().Title("distillation summary")
            .AddColumns("stage", "objective", "steps", "tokens", "minutes", "first eval", "last eval", "student ppl");
        foreach (var s in summary.Stages)
        {
            string Score(EvalMetrics? e) => e is null ? "" : s.Objective switch
            {
                Objective.AttentionAlignment when e.Alignment is { } a => $"align {a:G4}",
                Objective.Distillation when e.Kl is { } kl => $"KL {kl:G4}",
                _ => $"CE {e.StudentCrossEntropy:G4}",
            };
            table.AddRow(Markup.Escape(s.Name), RecipeLoader.NameOf(s.Objective), s.Steps.ToString("N0"), s.Tokens.ToString("N0"), (s.Seconds / 60).ToString("F1"),
                Score(s.First), Score(s.Last), s.Last is null ? "" : s.Last.StudentPerplexity.ToString("F3"));
        }
        var stdout = AnsiConsole.Console;
        stdout.Write(table);
        if (summary.StudentFolder.Length == 0)
        {
            Console.Out.WriteLine(NextStep(options));   // one line, not wrapped at the console width
            return;
        }
        stdout.MarkupLineInterpolated($"held-out perplexity over {summary.ValidationTokens:N0} tokens (windows of {summary.EvalSequenceLength}): teacher {summary.TeacherPerplexity:F4}, student {summary.StudentPerplexity:F4}, ratio {summary.PerplexityRatio:F4}");
        stdout.MarkupLineInterpolated($"student: {summary.StudentFolder}   ({summary.Seconds / 60:F1} minutes)");
    }

    /// <summary>What to run next when a run ends before its last stage: a shard job's stage needs its merge first.</summary>
    public static string NextStep(DistillOptions? options) => options switch
    {
        { Shard: { } s, OnlyStage: { } stage } =>
            $"no final student yet: this job trained shard {s.Index}/{s.Count} of stage '{stage}'. When all {s.Count} shard jobs have finished, " +
            $"merge them (the same --recipe and --run-dir, with --stage {stage} --merge-shards), then continue the run with --resume",
        { OnlyStage: { } stage } =>
            $"no final student yet: stage '{stage}' is done and later stages have not run; continue the run with --resume",
        _ => "no final student yet: the last stage has not run; continue the run with --resume",
    };
}
