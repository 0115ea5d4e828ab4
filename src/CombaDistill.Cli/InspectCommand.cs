using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using CombaDistill.IO;
using CombaDistill.Modeling;
using CombaDistill.Modeling.Comba;
using CombaDistill.Modeling.Llama;
using Spectre.Console;

namespace CombaDistill.Cli;

/// <summary><c>inspect</c>: architecture, parameter counts, files and memory of a model folder, from headers only.</summary>
static class InspectCommand
{
    public static Command Create()
    {
        var model = new Argument<string>("model") { Description = "Hugging Face model folder" };
        var json = new Option<bool>("--json") { Description = "print JSON instead of tables" };
        var context = new Option<int?>("--context") { Description = "tokens to size the KV cache for (default: max_position_embeddings)" };
        var command = new Command("inspect", "Describe a model folder without loading its weights") { model, json, context };
        command.SetAction(CliCommon.Run((parse, ct) =>
        {
            var folder = parse.GetValue(model)!;
            var modelType = CausalLMLoader.ModelTypeOf(folder);
            var student = CombaStudentConfig.IsStudentType(modelType) ? StudentSummary.Inspect(folder, parse.GetValue(context)) : null;
            // a student's summary describes its teacher-shaped backbone; what the folder is comes from its own config.json
            var summary = student?.Model ?? ModelSummary.Inspect(folder, parse.GetValue(context));
            if (parse.GetValue(json))
            {
                var j = ToJson(summary);
                if (student is not null)
                {
                    j["teacher_architecture"] = j["config"]!.DeepClone();
                    j["config"] = InputFile.ReadJsonObject(Path.Combine(folder, "config.json"), "config.json", o => o.DeepClone());
                    j["comba"] = ConvertCommand.StudentJson(student);
                }
                Console.Out.WriteLine(j.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            }
            else
            {
                Render(summary, student is null ? null : modelType);
                if (student is not null) ConvertCommand.RenderStudent(student);
            }
            return 0;
        }));
        return command;
    }

    static JsonObject ToJson(ModelSummary s) => new()
    {
        ["folder"] = s.Folder,
        ["config"] = s.Config.ToJson(),
        ["parameters"] = new JsonObject(s.ParametersByPart.Select(p => KeyValuePair.Create(p.Key, (JsonNode?)p.Value))),
        ["total_parameters"] = s.TotalParameters,
        ["weight_dtypes"] = new JsonArray(s.WeightDtypes.Select(d => (JsonNode?)d).ToArray()),
        ["files"] = new JsonArray(s.Files.Select(f => (JsonNode?)new JsonObject { ["name"] = f.Name, ["bytes"] = f.Bytes }).ToArray()),
        ["weight_bytes"] = s.WeightBytes,
        ["tokenizer"] = s.Tokenizer,
        ["context"] = s.Context,
        ["kv_cache_bytes"] = s.KvCacheBytes,
    };

    static void Render(ModelSummary s, string? studentType)
    {
        var c = s.Config;
        var console = AnsiConsole.Console;
        var architecture = new Table().AddColumns("architecture", "");
        architecture.AddRow("model_type", Markup.Escape(studentType is null ? c.ModelType : $"{studentType} (a Comba student of a {c.ModelType} teacher)"));
        architecture.AddRow("layers", $"{c.NumHiddenLayers}");
        architecture.AddRow("hidden / intermediate", $"{c.HiddenSize} / {c.IntermediateSize}");
        architecture.AddRow("heads / kv heads / head_dim", $"{c.NumAttentionHeads} / {c.NumKeyValueHeads} / {c.HeadDim}");
        architecture.AddRow("vocabulary", $"{c.VocabSize}");
        architecture.AddRow("max positions", $"{c.MaxPositionEmbeddings}");
        architecture.AddRow("rope", Markup.Escape($"theta {c.RopeTheta}" + (c.RopeScaling is { } r ? $", {r.Type} x{r.Factor}" : "")));
        architecture.AddRow("biases", c.QkvBias ? (c.OutputBias ? "q, k, v, o" : "q, k, v") : "none");
        architecture.AddRow("tied embeddings", c.TieWordEmbeddings ? "yes" : "no");
        architecture.AddRow("tokenizer", Markup.Escape(s.Tokenizer));
        console.Write(architecture);

        var parameters = new Table().AddColumns("part", "parameters");
        foreach (var part in ModelSummary.Parts.Where(p => s.ParametersByPart[p] > 0 || p == "head"))
            parameters.AddRow(part, part == "head" && c.TieWordEmbeddings ? "tied to embeddings" : $"{s.ParametersByPart[part]:N0}");
        parameters.AddRow("[bold]total[/]", $"[bold]{s.TotalParameters:N0}[/]");
        console.Write(parameters);

        var memory = new Table().AddColumns("storage", "");
        memory.AddRow("weight dtypes", string.Join(", ", s.WeightDtypes));
        foreach (var f in s.Files) memory.AddRow(Markup.Escape(f.Name), Bytes(f.Bytes));
        memory.AddRow("weights", Bytes(s.WeightBytes));
        memory.AddRow($"KV cache, {s.Context:N0} tokens", Bytes(s.KvCacheBytes));
        console.Write(memory);
    }

    static string Bytes(long n) => n switch
    {
        >= 1L << 30 => $"{n / (double)(1L << 30):F2} GiB ({n:N0} bytes)",
        >= 1L << 20 => $"{n / (double)(1L << 20):F2} MiB ({n:N0} bytes)",
        >= 1L << 10 => $"{n / 1024.0:F1} KiB ({n:N0} bytes)",
        _ => $"{n:N0} bytes",
    };
}
