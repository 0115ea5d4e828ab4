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
            BenchCommand.CheckJsonTarget(parse);
            CliCommon.SetThreads(parse.GetValue(threads));
            var folder = parse.GetValue(work) ?? Path.Combine(Path.GetTempPath(), $"combadistill-bench-distill-{Guid.NewGuid():N}");
            var report = DistillationBenchmark.Run(loaded, folder, options with { Device = device }, parse.GetValue(keep), new Lines(), ct);

            return BenchCommand.Show(parse, report.ToReport());
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
