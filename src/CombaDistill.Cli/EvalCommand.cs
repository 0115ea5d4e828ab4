using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using CombaDistill.Evaluation;
using CombaDistill.IO;
using CombaDistill.Modeling;
using CombaDistill.Tokenization;
using Spectre.Console;
using ScalarType = TorchSharp.torch.ScalarType;

namespace CombaDistill.Cli;

/// <summary>
/// <c>eval</c>: a model (and, beside it, its teacher) on perplexity, agreement, multiple choice,
/// recall and generation speed. The summary table goes to standard output; report files to --out.
/// </summary>
static class EvalCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "model folder to evaluate (a student, or any model)", Required = true };
        var teacher = new Option<string?>("--teacher") { Description = "teacher folder: every metric is measured for both, with their ratio" };
        var tasks = new Option<string?>("--tasks") { Description = "comma-separated: ppl, agreement, mqar, passkey, speed, mc:FILE.jsonl (default: all but mc; agreement only with --teacher)" };
        var data = new Option<string?>("--data") { Description = "text for ppl and agreement: a .txt file, or .jsonl with a \"text\" field per line" };
        var output = new Option<string?>("--out") { Description = "folder for report.json, report.md and the PNG plots (created if missing)" };
        var json = new Option<string?>("--json") { Description = "also write report.json to this file" };
        var maxTokens = new Option<int>("--max-tokens") { Description = "tokens of --data used (from its start)", DefaultValueFactory = _ => 4096 };
        var window = new Option<int?>("--window") { Description = "tokens per forward for ppl/agreement (default: the model's context)" };
        var stride = new Option<int?>("--stride") { Description = "sliding windows every N tokens (default: packed windows, no overlap)" };
        var mqarPairs = new Option<string?>("--mqar-pairs") { Description = "MQAR key-value pair counts, e.g. 4,8,16,32" };
        var mqarLengths = new Option<string?>("--mqar-lengths") { Description = "MQAR sequence lengths (default: a quarter, half and all of the context, at most 1024)" };
        var mqarSamples = new Option<int>("--mqar-samples") { Description = "MQAR sequences per cell", DefaultValueFactory = _ => 16 };
        var passkeyLengths = new Option<string?>("--passkey-lengths") { Description = "passkey context lengths in tokens (default as MQAR)" };
        var passkeyDepths = new Option<string?>("--passkey-depths") { Description = "passkey depths in [0,1], e.g. 0,0.25,0.5,0.75,1" };
        var passkeyTrials = new Option<int>("--passkey-trials") { Description = "passkeys per (length, depth)", DefaultValueFactory = _ => 4 };
        var speedLengths = new Option<string?>("--speed-lengths") { Description = "generated lengths at which speed and memory are sampled (default 256,512,1024,2048)" };
        var seed = new Option<int>("--seed") { Description = "seed of the synthetic tasks", DefaultValueFactory = _ => 1234 };
        var dtype = CliCommon.DTypeOption("the dtype to run in (default: each checkpoint's torch_dtype)", ScalarType.Float32, ScalarType.BFloat16);
        var threads = CliCommon.ThreadsOption();
        var command = new Command("eval", "Evaluate a model, side by side with its teacher")
        {
            model, teacher, tasks, data, output, json, maxTokens, window, stride, mqarPairs, mqarLengths, mqarSamples,
            passkeyLengths, passkeyDepths, passkeyTrials, speedLengths, seed, dtype, threads,
        };
        command.SetAction(CliCommon.Run((parse, ct) =>
        {
            var taskList = parse.GetValue(tasks) ?? (parse.GetValue(teacher) is null ? "ppl,mqar,passkey,speed" : "ppl,agreement,mqar,passkey,speed");
            var (taskSet, multipleChoice) = EvaluationPlan.ParseTasks(taskList);
            var plan = new EvaluationPlan
            {
                Tasks = taskSet,
                DataPath = parse.GetValue(data),
                MultipleChoicePath = multipleChoice,
                MaxTokens = parse.GetValue(maxTokens),
            };
            // Files are checked before anything slow happens.
            if (plan.DataPath is { } d && !File.Exists(d)) throw new InvalidInputException(d, "data file does not exist");
            if (multipleChoice is not null) MultipleChoice.Load(multipleChoice);
            if (parse.GetValue(output) is { Length: > 0 } o) OutputPath.RequireFolder(o, "--out");
            if (parse.GetValue(json) is { Length: > 0 } j && Path.GetDirectoryName(Path.GetFullPath(j)) is { } parent && !Directory.Exists(parent))
                throw new InvalidInputException(j, $"folder {parent} does not exist");

            var device = CliCommon.Start(parse);
            CliCommon.SetThreads(parse.GetValue(threads));
            // still before the model loads
            plan.CheckInputs(parse.GetValue(teacher) is not null,
                parse.GetValue(tasks) is null ? "; the default tasks need it: give --data, or pick others, e.g. --tasks mqar,passkey,speed" : "");
            var clock = Stopwatch.StartNew();
            var dtypeName = parse.GetValue(dtype);
            using var evaluated = Load(parse.GetValue(model)!, dtypeName, device);
            using var reference = parse.GetValue(teacher) is { } t ? Load(t, dtypeName, device) : null;
            CliCommon.Err.WriteLine($"loaded {evaluated.Model.Info.Path}{(reference is null ? "" : $" and teacher {reference.Model.Info.Path}")} on {device.type} in {clock.Elapsed.TotalSeconds:F1}s");

            var defaults = Evaluator.Defaults(plan, evaluated.Model.Model, reference?.Model.Model);
            var mqarDefaults = defaults.Mqar!;
            var passkeyDefaults = defaults.Passkey!;
            plan = defaults with
            {
                Windowing = new Windowing(parse.GetValue(window) ?? defaults.Windowing!.Length, parse.GetValue(stride)),
                Mqar = new MqarOptions(Ints(parse.GetValue(mqarPairs), "--mqar-pairs") ?? mqarDefaults.Pairs,
                    Ints(parse.GetValue(mqarLengths), "--mqar-lengths") ?? mqarDefaults.Lengths, parse.GetValue(mqarSamples), parse.GetValue(seed)),
                Passkey = new PasskeyOptions(Ints(parse.GetValue(passkeyLengths), "--passkey-lengths") ?? passkeyDefaults.Lengths,
                    Doubles(parse.GetValue(passkeyDepths), "--passkey-depths") ?? passkeyDefaults.Depths, parse.GetValue(passkeyTrials), parse.GetValue(seed)),
                Speed = new SpeedOptions(Ints(parse.GetValue(speedLengths), "--speed-lengths") ?? defaults.Speed!.Lengths),
            };
            plan.Windowing!.Validate();
            plan.Mqar.Validate();
            plan.Passkey.Validate();
            plan.Speed.Validate();

            var report = Evaluator.Run(evaluated.Model, reference?.Model, plan, new StepsToStandardError(), ct);

            AnsiConsole.Write(SummaryTable(report));
            if (parse.GetValue(output) is { Length: > 0 } folder)
                foreach (var file in ReportWriter.Write(report, folder)) CliCommon.Err.WriteLine($"wrote {file}");
            if (parse.GetValue(json) is { Length: > 0 } jsonFile) AtomicFile.WriteAllText(jsonFile, ReportWriter.Json(report));
            return 0;
        }));
        return command;
    }

    static Table SummaryTable(EvaluationReport report)
    {
        var paired = report.Teacher is not null;
        var table = new Table().Title(paired ? $"{report.Model.Path} vs teacher {report.Teacher!.Path}" : report.Model.Path);
        table.AddColumn("section").AddColumn("metric");
        table.AddColumn(new TableColumn(paired ? "student" : "value").RightAligned());
        if (paired) table.AddColumn(new TableColumn("teacher").RightAligned()).AddColumn(new TableColumn("student ÷ teacher").RightAligned());
        foreach (var row in report.Rows())
        {
            string[] cells = paired
                ? [row.Section, row.Metric, ReportWriter.Format(row.Model, row.Format), ReportWriter.Format(row.Teacher, row.Format), ReportWriter.Format(row.Ratio, "F3")]
                : [row.Section, row.Metric, ReportWriter.Format(row.Model, row.Format)];
            table.AddRow(cells.Select(Markup.Escape).ToArray());
        }
        return table;
    }

    /// <summary>A model, its tokenizer and what the report says about it; disposing frees the weights.</summary>
    sealed class LoadedModel(EvaluatedModel model) : IDisposable
    {
        public EvaluatedModel Model { get; } = model;
        public void Dispose() => (Model.Model as IDisposable)?.Dispose();
    }

    /// <summary>A teacher or a student, whichever config.json's model_type says, with the folder's tokenizer.</summary>
    static LoadedModel Load(string folder, ScalarType? dtype, TorchSharp.torch.Device device)
    {
        var lm = CausalLMLoader.Load(folder, dtype, device);
        try
        {
            var tokenizer = TokenizerLoader.ForModel(folder, lm.Config.VocabSize, lm.Config.BosTokenId, lm.Config.EosTokenIds[0]);
            var info = new ModelInfo(folder, CausalLMLoader.ModelTypeOf(folder), EvaluatedModel.ParameterCount(lm), tokenizer.Description);
            return new LoadedModel(new EvaluatedModel(lm, tokenizer, info));
        }
        catch
        {
            (lm as IDisposable)?.Dispose();
            throw;
        }
    }

    static int[]? Ints(string? list, string option) => list is null ? null : Split(list).Select(s =>
        int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) ? n : throw new ArgumentException($"{option}: '{s}' is not a whole number")).ToArray();

    static double[]? Doubles(string? list, string option) => list is null ? null : Split(list).Select(s =>
        double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var x) ? x : throw new ArgumentException($"{option}: '{s}' is not a number")).ToArray();

    static string[] Split(string list) => list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    /// <summary>One line on standard error as each step finishes, printed on the evaluating thread so lines keep their order.</summary>
    sealed class StepsToStandardError : IProgress<EvaluationProgress>
    {
        readonly Stopwatch clock = Stopwatch.StartNew();

        public void Report(EvaluationProgress value)
        {
            if (value.Done != value.Total) return;
            CliCommon.Err.WriteLine($"{value.Step}: {value.Total} done after {clock.Elapsed.TotalSeconds:F1}s");
        }
    }
}
