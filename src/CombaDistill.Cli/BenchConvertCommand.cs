using System.CommandLine;
using CombaDistill.Conversion;
using Spectre.Console;

namespace CombaDistill.Cli;

/// <summary><c>bench convert</c>: a synthetic checkpoint converted against a plain copy of its files, with the peak memory.</summary>
static class BenchConvertCommand
{
    public static Command Create()
    {
        var size = new Option<string>("--size") { Description = "size of the synthetic teacher (2GB or more)", DefaultValueFactory = _ => "2GB" };
        var work = new Option<string?>("--work") { Description = "folder to write the teacher, the copy and the student in (default: a new temporary folder)" };
        var keep = new Option<bool>("--keep") { Description = "keep the files afterwards" };
        var command = new Command("convert", "Conversion throughput against a plain copy of the same bytes, and peak resident memory (must stay under a quarter of the checkpoint)")
        {
            size, work, keep,
        };
        command.SetAction(CliCommon.Run((parse, ct) =>
        {
            CliCommon.Start(parse);
            BenchCommand.CheckJsonTarget(parse);
            var target = ByteSize.Parse(parse.GetValue(size)!, "--size");
            // The check is the process's peak resident memory against a quarter of the checkpoint. The process holds
            // about 180 MB before it converts (docs/benchmarks.md), and the synthetic teacher's largest tensor, its
            // 32,000 × 2,048 bf16 embedding, is 131 MB on top: a checkpoint under 2 GB leaves the converter no room.
            const long minimum = 2_000_000_000;
            if (target < minimum)
                throw new ArgumentException($"--size {parse.GetValue(size)} is below {ByteSize.Format(minimum)}: the limit checked, a quarter of the checkpoint, must hold the process itself (about 180 MB) and the teacher's 131 MB embedding with room to spare");
            var folder = parse.GetValue(work) ?? Directory.CreateTempSubdirectory("combadistill-bench-convert-").FullName;
            var stage = new ImmediateProgress<string>(s => CliCommon.Err.MarkupLineInterpolated($"[grey]{s}…[/]"));
            var r = ConversionBenchmark.Run(folder, target, parse.GetValue(keep), stage, cancellationToken: ct);
            if (parse.GetValue(work) is null && !parse.GetValue(keep)) Directory.Delete(folder, recursive: true);

            return BenchCommand.Show(parse, r.ToReport());
        }));
        return command;
    }
}
