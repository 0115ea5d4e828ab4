using System.CommandLine;
using CombaDistill.Conversion;
using Spectre.Console;

namespace CombaDistill.Cli;

/// <summary><c>bench convert</c>: a synthetic checkpoint converted against a plain copy of its files, with the peak memory.</summary>
static class BenchConvertCommand
{
    public static Command Create()
    {
        var size = new Option<string>("--size") { Description = "size of the synthetic teacher", DefaultValueFactory = _ => "2GB" };
        var work = new Option<string?>("--work") { Description = "folder to write the teacher, the copy and the student in (default: a new temporary folder)" };
        var keep = new Option<bool>("--keep") { Description = "keep the files afterwards" };
        var command = new Command("convert", "Conversion throughput against a plain copy of the same bytes, and peak resident memory (must stay under a quarter of the checkpoint)")
        {
            size, work, keep,
        };
        command.SetAction(CliCommon.Run((parse, ct) =>
        {
            CliCommon.Start(parse);
            var target = ByteSize.Parse(parse.GetValue(size)!, "--size");
            var folder = parse.GetValue(work) ?? Directory.CreateTempSubdirectory("combadistill-bench-convert-").FullName;
            var stage = new ImmediateProgress<string>(s => CliCommon.Err.MarkupLineInterpolated($"[grey]{s}…[/]"));
            var r = ConversionBenchmark.Run(folder, target, parse.GetValue(keep), stage, cancellationToken: ct);
            if (parse.GetValue(work) is null && !parse.GetValue(keep)) Directory.Delete(folder, recursive: true);

            var table = new Table().Title($"synthetic bf16 teacher: {r.Layers} layers, hidden {r.HiddenSize}, {ByteSize.Format(r.CheckpointBytes)}").AddColumns("", "seconds", "GB/s");
            table.AddRow("plain copy of the files", $"{r.CopySeconds:F2}", $"{r.CopyGBps:F2}");
            table.AddRow("convert", $"{r.ConvertSeconds:F2}", $"{r.ConvertGBps:F2}");
            AnsiConsole.Write(table);
            var memory = new Table().AddColumns("memory", "");
            memory.AddRow("resident before converting", ByteSize.Format(r.ResidentBeforeBytes));
            memory.AddRow("[bold]peak resident (VmHWM)[/]", $"[bold]{ByteSize.Format(r.PeakResidentBytes)}[/]" + (r.PeakMeasuredAlone ? "" : " (includes writing the teacher)"));
            memory.AddRow("limit: a quarter of the checkpoint", ByteSize.Format(r.PeakLimitBytes));
            memory.AddRow("largest tensor", ByteSize.Format(r.LargestTensorBytes));
            memory.Caption(r.WithinLimit ? "[green]within the limit[/]" : "[red]over the limit[/]");
            AnsiConsole.Write(memory);
            BenchCommand.WriteJson(parse, r);
            return r.WithinLimit ? 0 : 1;
        }));
        return command;
    }
}
