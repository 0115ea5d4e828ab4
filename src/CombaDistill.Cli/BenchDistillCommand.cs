using System.CommandLine;
using CombaDistill.Conversion;
using CombaDistill.Distillation;
using Spectre.Console;

namespace CombaDistill.Cli;

/// <summary><c>bench distill</c>: a recipe's stages run for a few steps each; tokens/s, peak memory and where a step's time goes.</summary>
static class BenchDistillCommand
{
    public static Command Create()
    {
        var recipe = new Option<string>("--recipe") { Description = "the recipe whose stages are measured", Required = true };
        var steps = new Option<int>("--steps") { Description = "timed optimizer steps per stage", DefaultValueFactory = _ => 20 };
        var warmup = new Option<int>("--warmup") { Description = "untimed steps first (at least 1)", DefaultValueFactory = _ => 3 };
        var stages = new Option<string?>("--stages") { Description = "comma-separated stage names to measure (default: all); earlier stages run one step each" };
        var work = new Option<string?>("--work") { Description = "folder for the throwaway run (default: a new temporary folder)" };
        var keep = new Option<bool>("--keep") { Description = "keep the throwaway run afterwards" };
        var threads = CliCommon.ThreadsOption();
        var command = new Command("distill", "Distillation speed on this machine: each stage's tokens/s and peak memory, and the shares of a step spent in the teacher and in the Comba op")
        {
            recipe, steps, warmup, stages, work, keep, threads,
        };
        command.SetAction(CliCommon.Run((parse, ct) =>
        {
            var options = new DistillBenchOptions
            {
                Steps = parse.GetValue(steps), Warmup = parse.GetValue(warmup),
                Stages = parse.GetValue(stages) is { Length: > 0 } list ? list.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries) : null,
            };
            options.Validate();
            var loaded = RecipeLoader.Load(parse.GetValue(recipe)!);     // a bad recipe fails before anything starts
            var device = CliCommon.Start(parse);
            CliCommon.SetThreads(parse.GetValue(threads));
            var folder = parse.GetValue(work) ?? Path.Combine(Path.GetTempPath(), $"combadistill-bench-distill-{Guid.NewGuid():N}");
            var report = DistillationBenchmark.Run(loaded, folder, options with { Device = device }, parse.GetValue(keep), new Lines(), ct);

            var table = new Table().Title($"{Markup.Escape(Path.GetFileName(report.Recipe))} on {Markup.Escape(report.Device)}, {report.Steps} timed steps per stage")
                .AddColumns("stage", "[bold]tokens/s[/]", "ms/step", "peak memory", "teacher fwd", "Comba op fwd+bwd");
            foreach (var s in report.Stages)
            {
                var memory = s.PeakDeviceBytes is { } gpu ? $"{ByteSize.Format(gpu)} GPU" : s.PeakResidentBytes is { } rss ? $"{ByteSize.Format(rss)} RSS" : "—";
                table.AddRow($"{Markup.Escape(s.Stage)}\n[grey]{s.Objective}, {s.Precision}[/]", $"[bold]{s.TokensPerSecond:N0}[/]", $"{s.StepMs:F1}", memory,
                    $"{s.TeacherShare:P0}\n[grey]{s.TeacherForwardMs:F2} ms × {s.TeacherCallsPerStep}[/]",
                    $"{s.CombaShare:P0}\n[grey]{s.CombaMs:F2} ms × {s.CombaCallsPerStep}[/]");
            }
            table.Caption("shares: each part timed alone at the stage's shapes, times its calls per step, over the measured step");
            AnsiConsole.Write(table);
            foreach (var s in report.Stages)
                AnsiConsole.MarkupLineInterpolated($"[grey]{s.Stage}: the Comba op ran {s.CombaPath}, (B, H, T, Dk, Dv) = {s.CombaShape}[/]");
            BenchCommand.WriteJson(parse, report);
            return 0;
        }));
        return command;
    }

    sealed class Lines : IProgress<DistillationProgress>
    {
        public void Report(DistillationProgress p)
        {
            if (p.Note is not null) CliCommon.Err.MarkupLineInterpolated($"[grey]{p.Note}[/]");
            else if (p.Step == p.TotalSteps) CliCommon.Err.MarkupLineInterpolated($"[grey]stage '{p.Stage}': {p.Step} steps, {p.TokensPerSecond:N0} tokens/s overall[/]");
        }
    }
}
