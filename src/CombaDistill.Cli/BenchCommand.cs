using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using CombaDistill.Conversion;
using CombaDistill.IO;
using CombaDistill.Runtime;
using Spectre.Console;

namespace CombaDistill.Cli;

/// <summary><c>combadistill bench ...</c>: measurements printed as a table, optionally saved as JSON.</summary>
static class BenchCommand
{
    // A new benchmark is one more entry here and one more Create method below.
    static readonly Func<Command>[] Subcommands = [CreateLoad, BenchCombaCommand.Create, BenchConvertCommand.Create, BenchKernelCommand.Create, BenchDistillCommand.Create];

    public static readonly Option<string?> JsonOption = new("--json") { Description = "also write the result to this JSON file", Recursive = true };

    static readonly JsonSerializerOptions JsonStyle = new()
    {
        WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.CamelCase, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

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
            CheckJsonTarget(parse);
            return Show(parse, LoadBenchmark.Run(path, parse.GetValue(repeats), ct).ToReport(path));
        }));
        return command;
    }

    /// <summary>
    /// Every bench command ends here: the report as a table on stdout (the columns marked for it, formatted by unit,
    /// then its timing and notes) and, with --json, the whole report as JSON. Returns the exit code: 1 when a bound
    /// the benchmark checks was broken.
    /// </summary>
    internal static int Show(ParseResult parse, BenchReport report)
    {
        var shown = report.Columns.Where(c => c.InTable).ToArray();
        var table = new Table().Title(Markup.Escape(report.Title));
        foreach (var c in shown)
            table.AddColumn(new TableColumn(Markup.Escape(c.Title)) { Alignment = c.Unit == BenchUnit.Text ? Justify.Left : Justify.Right });
        foreach (var row in report.Rows)
            table.AddRow(shown.Select(c => Markup.Escape(Format(row[c.Key], c.Unit))).ToArray());
        table.Caption(Markup.Escape($"{report.Timing}; {report.Version}"));
        AnsiConsole.Write(table);
        foreach (var note in report.Notes) AnsiConsole.MarkupLineInterpolated($"[grey]{note}[/]");
        if (parse.GetValue(JsonOption) is { Length: > 0 } file)
            AtomicFile.WriteAllText(file, JsonSerializer.Serialize(report, JsonStyle) + "\n");
        return report.WithinBounds ? 0 : 1;
    }

    /// <summary>A cell as people read it; JSON keeps the raw value.</summary>
    internal static string Format(object? value, BenchUnit unit) => value switch
    {
        null => "—",
        string s => s,
        bool b => b ? "yes" : "no",
        _ => FormatNumber(Convert.ToDouble(value, CultureInfo.InvariantCulture), unit),
    };

    static string FormatNumber(double x, BenchUnit unit) => unit switch
    {
        BenchUnit.Count => x.ToString("N0", CultureInfo.InvariantCulture),
        BenchUnit.Milliseconds or BenchUnit.Seconds => x.ToString(x < 10 ? "F3" : x < 1000 ? "F1" : "N0", CultureInfo.InvariantCulture),
        BenchUnit.PerSecond or BenchUnit.Flops => x.ToString("N0", CultureInfo.InvariantCulture),
        BenchUnit.Share => x.ToString("P0", CultureInfo.InvariantCulture),
        BenchUnit.Bytes => ByteSize.Format((long)x),
        _ => x.ToString(x < 10 ? "F2" : "F1", CultureInfo.InvariantCulture),
    };

    /// <summary>Fails before minutes of measuring, not after, when the --json file cannot be written where asked.</summary>
    internal static void CheckJsonTarget(ParseResult parse)
    {
        if (parse.GetValue(JsonOption) is { Length: > 0 } jsonPath && Path.GetDirectoryName(Path.GetFullPath(jsonPath)) is { } folder && !Directory.Exists(folder))
            throw new InvalidInputException(jsonPath, $"folder {folder} does not exist");
    }
}
