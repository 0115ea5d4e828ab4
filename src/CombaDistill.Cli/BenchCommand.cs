using System.CommandLine;
using System.Text.Json;
using CombaDistill.IO;
using Spectre.Console;

namespace CombaDistill.Cli;

/// <summary><c>combadistill bench ...</c>: measurements printed as a table, optionally saved as JSON.</summary>
static class BenchCommand
{
    // A new benchmark is one more entry here and one more Create method below.
    static readonly Func<Command>[] Subcommands = [CreateLoad, BenchCombaCommand.Create, BenchConvertCommand.Create, BenchKernelCommand.Create, BenchDistillCommand.Create];

    public static readonly Option<string?> JsonOption = new("--json") { Description = "also write the result to this JSON file", Recursive = true };

    static readonly JsonSerializerOptions JsonStyle = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.CamelCase };

    public static Command Create()
    {
        var bench = new Command("bench", "Measure parts of the pipeline on this machine.");
        bench.Options.Add(JsonOption);
        foreach (var create in Subcommands) bench.Subcommands.Add(create());
        return bench;
    }

    static Command CreateLoad()
    {
        var model = new Argument<string>("MODEL") { Description = "a .safetensors file or a model folder (model.safetensors or a sharded index)" };
        var repeats = new Option<int>("--repeats") { Description = "timed rounds; the median is reported", DefaultValueFactory = _ => 5 };
        var command = new Command("load", "Checkpoint read speed next to a plain sequential read of the same files (page cache warm for both).") { model, repeats };
        command.SetAction(CliCommon.Run((parse, ct) =>
        {
            CliCommon.Start(parse);
            var path = parse.GetValue(model)!;
            var result = LoadBenchmark.Run(path, parse.GetValue(repeats), ct);
            var table = new Table().Title($"{result.Tensors} tensors in {result.Files} file(s), median of {result.Repeats}").AddColumns("read", "bytes", "median s", "GB/s");
            table.AddRow("checkpoint (every tensor)", $"{result.Bytes:N0}", $"{result.CheckpointSeconds:F4}", $"{result.CheckpointGBps:F2}");
            table.AddRow("sequential FileStream", $"{result.FileBytes:N0}", $"{result.SequentialSeconds:F4}", $"{result.SequentialGBps:F2}");
            table.Caption($"checkpoint / sequential = {result.Ratio:P0}");
            AnsiConsole.Write(table);
            WriteJson(parse, result);
            return 0;
        }));
        return command;
    }

    internal static void WriteJson<T>(ParseResult parse, T result)
    {
        if (parse.GetValue(JsonOption) is { Length: > 0 } file)
            AtomicFile.WriteAllText(file, JsonSerializer.Serialize(result, JsonStyle) + "\n");
    }
}
