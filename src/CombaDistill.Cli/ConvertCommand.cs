using System.CommandLine;
using System.Text.Json.Nodes;
using CombaDistill.Conversion;
using CombaDistill.Modeling.Comba;
using Spectre.Console;
using ScalarType = TorchSharp.torch.ScalarType;

namespace CombaDistill.Cli;

/// <summary>
/// <c>convert</c>: a Llama-family checkpoint becomes a Comba student folder. Progress goes to standard error; the
/// conversion report is printed as tables on standard output (and saved as conversion_report.json in the folder).
/// </summary>
static class ConvertCommand
{
    public static Command Create()
    {
        var defaults = ConversionOptions.DefaultComba;
        var from = new Option<string>("--from") { Description = "the teacher: a Hugging Face folder, a model.safetensors.index.json or pytorch_model.bin.index.json, or a .safetensors or pytorch_model.bin file (with --config)", Required = true };
        var output = new Option<string?>("--out") { Description = "the student folder to create (default: beside the teacher, named after it with -comba)" };
        var config = new Option<string?>("--config") { Description = "the teacher's config.json, when it is not beside --from" };
        var keep = new Option<string>(AttentionLayers.Option)
        {
            Description = "layers that keep softmax attention: none, all, every:N (layers N-1, 2N-1, ...), or indices such as 0,15 or 0-3",
            DefaultValueFactory = _ => "none",
        };
        var dtype = CliCommon.DTypeOption("the student's dtype (default: the teacher's, whose tensors are then copied bit for bit)",
            ScalarType.Float32, ScalarType.BFloat16, ScalarType.Float16, ScalarType.Float64);
        var maxShard = new Option<string>("--max-shard-size") { Description = "split model.safetensors into shards of at most this size", DefaultValueFactory = _ => "5GB" };
        var force = new Option<bool>("--force") { Description = "replace an existing output folder" };

        var rotary = new Option<string>("--rotary") { Description = "none, or teacher: rotate q and k with the teacher's rotary embedding", DefaultValueFactory = _ => defaults.Rotary };
        rotary.AcceptOnlyFromAmong(CombaConfig.RotaryModes);
        var shortConv = new Option<int>("--short-conv") { Description = "kernel of the causal convolution on q, k, v (0: none); identity-initialised", DefaultValueFactory = _ => defaults.ShortConv };
        var outputNorm = new Option<bool>("--output-norm") { Description = "per-head RMSNorm on the Comba output before o_proj" };
        var chunkSize = new Option<int>("--chunk-size") { Description = "chunk of the chunkwise form: 16, 32, 64 or 128", DefaultValueFactory = _ => defaults.ChunkSize };
        var scale = new Option<double>("--scale") { Description = "output scale s", DefaultValueFactory = _ => defaults.Scale };
        var initialD = new Option<double>("--initial-d") { Description = "initial output correction d in o = s S (q - d k)", DefaultValueFactory = _ => defaults.InitialD };
        var initialLambda = new Option<double>("--initial-lambda") { Description = "initial lambda in (0, 1)", DefaultValueFactory = _ => defaults.InitialLambda };
        var featureMap = new Option<string>("--feature-map") { Description = "identity, or taylor: expand q and k to the 2nd-order Taylor features of exp(q·k/√D)", DefaultValueFactory = _ => defaults.FeatureMap };
        featureMap.AcceptOnlyFromAmong(CombaConfig.FeatureMaps);
        var normalizeReadout = new Option<bool>("--normalize-readout") { Description = "divide each head's read-out by the sum of its weights (a weighted average, as softmax gives)" };
        var readoutEps = new Option<double>("--readout-eps") { Description = "epsilon of the normalised read-out", DefaultValueFactory = _ => defaults.ReadoutEps };

        var command = new Command("convert", "Turn a Llama-family checkpoint into a Comba student (streaming; nothing is left behind on failure)")
        {
            from, output, config, keep, dtype, maxShard, force, rotary, shortConv, outputNorm, chunkSize, scale, initialD, initialLambda,
            featureMap, normalizeReadout, readoutEps,
        };
        command.SetAction(CliCommon.Run((parse, ct) =>
        {
            CliCommon.Start(parse);
            if (ExportedStudent.Is(parse.GetValue(from)!))
            {
                // an export made by `combadistill export`: back to a student folder, the tensors bit for bit
                Option[] conversionOnly = [config, keep, dtype, rotary, shortConv, outputNorm, chunkSize, scale, initialD, initialLambda, featureMap, normalizeReadout, readoutEps];
                if (conversionOnly.FirstOrDefault(o => parse.GetResult(o) is { Implicit: false }) is { } given)
                    throw new InvalidInputException(parse.GetValue(from), $"is an exported student, which converts back as it is; {given.Name} does not apply");
                // without --out, beside the export as for any other --from
                var studentFolder = parse.GetValue(output) ?? DefaultOutput(parse.GetValue(from)!);
                var files = Export.HuggingFaceExport.ToStudentFolder(parse.GetValue(from)!, studentFolder, parse.GetValue(force), ByteSize.Parse(parse.GetValue(maxShard)!), ct);
                Console.Out.WriteLine($"student folder {studentFolder} from the export {parse.GetValue(from)}: {string.Join(", ", files)}");
                return 0;
            }
            var options = new ConversionOptions
            {
                KeepAttention = parse.GetValue(keep)!,
                DType = parse.GetValue(dtype),
                MaxShardBytes = ByteSize.Parse(parse.GetValue(maxShard)!),
                Force = parse.GetValue(force),
                Comba = defaults with
                {
                    Rotary = parse.GetValue(rotary)!,
                    ShortConv = parse.GetValue(shortConv),
                    OutputNorm = parse.GetValue(outputNorm),
                    ChunkSize = parse.GetValue(chunkSize),
                    Scale = parse.GetValue(scale),
                    InitialD = parse.GetValue(initialD),
                    InitialLambda = parse.GetValue(initialLambda),
                    FeatureMap = parse.GetValue(featureMap)!,
                    NormalizeReadout = parse.GetValue(normalizeReadout),
                    ReadoutEps = parse.GetValue(readoutEps),
                },
            };
            var outFolder = parse.GetValue(output) ?? DefaultOutput(parse.GetValue(from)!);
            if (parse.GetValue(output) is null)
            {
                // A teacher that is not there is the one error line, before anything is announced.
                TeacherSource.Resolve(parse.GetValue(from)!, parse.GetValue(config));
                CliCommon.Err.MarkupLineInterpolated($"writing the student to [bold]{outFolder}[/] (beside the teacher; --out chooses another folder)");
            }
            ConversionReport? report = null;
            // Redirected to a log, a progress bar only adds a "converting: 0%" line above an error; the report follows on stdout anyway.
            if (Console.IsErrorRedirected)
                report = CombaConverter.Convert(parse.GetValue(from)!, outFolder, options, parse.GetValue(config), null, ct);
            else CliCommon.Err.Progress()
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
                .Start(context =>
                {
                    var task = context.AddTask("converting", autoStart: true, maxValue: 1);
                    var progress = new ImmediateProgress<ConversionProgress>(p =>
                    {
                        task.MaxValue = Math.Max(1, p.BytesTotal);
                        task.Value = p.BytesDone;
                    });
                    report = CombaConverter.Convert(parse.GetValue(from)!, outFolder, options, parse.GetValue(config), progress, ct);
                });
            Render(report!, outFolder);
            return 0;
        }));
        return command;
    }

    /// <summary>
    /// Where a student goes without --out: beside the teacher, named after it with "-comba" (a folder "llama" gives
    /// "llama-comba"; a file "llama.safetensors" gives "llama-comba"; an index file names its folder).
    /// </summary>
    public static string DefaultOutput(string from)
    {
        var full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(from));
        var name = Path.GetFileName(full);
        if (File.Exists(full) && name.EndsWith(".index.json", StringComparison.Ordinal))
            return DefaultOutput(Path.GetDirectoryName(full)!);
        if (File.Exists(full))
            foreach (var extension in new[] { ".safetensors", ".bin" })
                if (name.EndsWith(extension, StringComparison.Ordinal) && name.Length > extension.Length) { name = name[..^extension.Length]; break; }
        return Path.Combine(Path.GetDirectoryName(full) ?? ".", name + "-comba");
    }

    /// <summary>The conversion report as tables: summary, parameters per part, new tensors, layer map.</summary>
    public static void Render(ConversionReport r, string folder)
    {
        var console = AnsiConsole.Console;
        var summary = new Table().Title("conversion").AddColumns("", "");
        summary.AddRow("teacher", Markup.Escape($"{r.Teacher} ({r.TeacherModelType})"));
        summary.AddRow("student", Markup.Escape(folder));
        summary.AddRow("dtype", r.DType);
        summary.AddRow("layers", $"{r.Layers}: {r.Layers - r.AttentionLayers.Count} Comba, {r.AttentionLayers.Count} attention");
        summary.AddRow("parameters", $"teacher {r.TeacherParameters:N0}, student {r.StudentParameters:N0}");
        summary.AddRow("[bold]extra parameters[/]", $"[bold]{r.ExtraParameters:N0} ({r.ExtraShare:P3} of the teacher)[/]");
        summary.AddRow("written", $"{ByteSize.Format(r.BytesWritten)} in {Markup.Escape(string.Join(", ", r.Files))}");
        if (r.Dropped.Count > 0) summary.AddRow("not carried over", Markup.Escape(string.Join(", ", r.Dropped)));
        if (r.TokenizerFiles.Count == 0) summary.AddRow("[yellow]tokenizer[/]", "[yellow]none found beside the teacher; copy it before generate[/]");
        console.Write(summary);

        var parts = new Table().AddColumns("part", "teacher", "student");
        foreach (var p in r.Parts) parts.AddRow(Markup.Escape(p.Part), $"{p.Teacher:N0}", $"{p.Student:N0}");
        parts.AddRow("[bold]total[/]", $"[bold]{r.TeacherParameters:N0}[/]", $"[bold]{r.StudentParameters:N0}[/]");
        console.Write(parts);

        if (r.NewTensors.Count > 0)
        {
            var created = new Table().AddColumns("new tensor (self_attn.)", "layers", "parameters", "initialisation");
            foreach (var t in r.NewTensors) created.AddRow(Markup.Escape(t.Tensor), $"{t.Layers}", $"{t.Parameters:N0}", Markup.Escape(t.Initialisation));
            console.Write(created);
        }

        var map = new Table().AddColumns("layers", "self_attn", "from the teacher", "new parameters per layer");
        foreach (var run in Runs(r.LayerMap))
        {
            var first = run[0];
            var layers = run.Count == 1 ? $"{first.Layer}" : $"{first.Layer}–{run[^1].Layer}";
            map.AddRow(layers, first.Mixer == "comba" ? "Comba" : "attention (kept)",
                Markup.Escape(string.Join(", ", first.FromTeacher.Select(n => n.Replace(".weight", "").Replace(".bias", " bias")).Distinct()) + ", mlp, norms"),
                $"{first.ExtraParameters:N0}");
        }
        console.Write(map);
    }

    /// <summary>Consecutive layers with the same mapping, so a 32-layer model is a few rows.</summary>
    static List<List<LayerMapping>> Runs(IReadOnlyList<LayerMapping> layers)
    {
        var runs = new List<List<LayerMapping>>();
        foreach (var layer in layers)
        {
            if (runs.Count > 0 && runs[^1][^1].Mixer == layer.Mixer && runs[^1][^1].ExtraParameters == layer.ExtraParameters
                && runs[^1][^1].FromTeacher.SequenceEqual(layer.FromTeacher) && runs[^1][^1].Layer == layer.Layer - 1)
                runs[^1].Add(layer);
            else
                runs.Add([layer]);
        }
        return runs;
    }

    /// <summary>What <c>inspect</c> adds for a student folder.</summary>
    public static void RenderStudent(StudentSummary s)
    {
        var student = new Table().AddColumns("comba student", "");
        student.AddRow("teacher model_type", s.Student.Architecture.ModelType);
        student.AddRow("attention layers", s.Student.AttentionLayers.Count == 0 ? "none (pure Comba)" : string.Join(", ", s.Student.AttentionLayers));
        student.AddRow("Comba parameters beyond q/k/v/o", $"{s.CombaParameters:N0}");
        student.AddRow("recurrent state, any length", ByteSize.Format(s.RecurrentStateBytes));
        foreach (var (key, value) in s.Student.Comba.ToJson()) student.AddRow(Markup.Escape(key), Markup.Escape(value?.ToJsonString() ?? "null"));
        AnsiConsole.Console.Write(student);
    }

    public static JsonObject StudentJson(StudentSummary s) => new()
    {
        ["teacher_model_type"] = s.Student.Architecture.ModelType,
        ["attention_layers"] = new JsonArray(s.Student.AttentionLayers.Select(l => (JsonNode?)l).ToArray()),
        ["comba_parameters"] = s.CombaParameters,
        ["recurrent_state_bytes"] = s.RecurrentStateBytes,
        ["options"] = s.Student.Comba.ToJson(),
    };
}

/// <summary>Recognises a folder written by <c>combadistill export</c>, which convert turns back into a student folder.</summary>
static class ExportedStudent
{
    public static bool Is(string from) =>
        Directory.Exists(from) && File.Exists(Path.Combine(from, "config.json"))
        && Modeling.CausalLMLoader.ModelTypeOf(from) == CombaStudentConfig.ExportedModelType;
}

/// <summary>Runs the handler on the reporting thread at once (Progress&lt;T&gt; would post it to a thread pool later).</summary>
sealed class ImmediateProgress<T>(Action<T> handler) : IProgress<T>
{
    public void Report(T value) => handler(value);
}
