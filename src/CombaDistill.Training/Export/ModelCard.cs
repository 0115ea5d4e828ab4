using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using CombaDistill.Conversion;
using CombaDistill.Distillation;
using CombaDistill.IO;
using CombaDistill.Modeling.Comba;

namespace CombaDistill.Export;

/// <summary>
/// The README.md of an export: front matter the hub reads, what the teacher was, the student's layout and options,
/// the recipe and results of the run that made it (when known), and how to load it.
/// </summary>
public static class ModelCard
{
    public sealed record Inputs(CombaStudentConfig Config, string DType, long Parameters, string StudentFolder, string? RunFolder, string? EvalFolder);

    public static string Write(Inputs x)
    {
        var c = x.Config;
        var a = c.Architecture;
        var s = new StringBuilder();
        s.Append("---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags:\n- comba\n- linear-attention\n- distillation\n- combadistill\n---\n\n");
        s.Append("# Comba student distilled with CombaDistill\n\n");
        var kind = c.AttentionLayers.Count == 0 ? "a pure Comba model: every attention layer is a Comba recurrence"
            : $"a hybrid: layers {string.Join(", ", c.AttentionLayers)} keep the teacher's softmax attention, the other {c.CombaLayerCount} are Comba recurrences";
        s.Append($"This is {kind} (Hu et al., 2025, *Comba: Improving Bilinear RNNs with Closed-loop Control*), made from a ")
         .Append($"{a.ModelType} teacher by CombaDistill. It decodes in constant memory per Comba layer.\n\n");

        s.Append("## Teacher\n\n");
        var teacher = TeacherOf(x);
        // only the folder's own name: the card is for publishing, and a local path says nothing to its readers
        s.Append(teacher is null ? $"- model type: {a.ModelType} (the source folder is not recorded)\n"
            : $"- source: `{TeacherName(teacher)}`\n- model type: {a.ModelType}\n");
        s.Append($"- layers {a.NumHiddenLayers}, hidden {a.HiddenSize}, heads {a.NumAttentionHeads} (KV heads {a.NumKeyValueHeads}), head dim {a.HeadDim}, vocabulary {a.VocabSize}\n\n");

        s.Append("## Student\n\n");
        s.Append($"- parameters: {x.Parameters.ToString("N0", CultureInfo.InvariantCulture)}, stored as {x.DType}\n");
        s.Append($"- softmax attention kept in layers: {(c.AttentionLayers.Count == 0 ? "none" : string.Join(", ", c.AttentionLayers))}\n");
        foreach (var (key, value) in c.Comba.ToJson()) s.Append($"- `{key}`: {value?.ToJsonString()}\n");
        s.Append('\n');

        if (x.RunFolder is { } run)
        {
            s.Append("## Recipe\n\n");
            var recipe = Path.Combine(run, DistillationRun.RecipeCopy);
            s.Append("The distillation recipe the run used:\n\n```yaml\n").Append(File.ReadAllText(recipe).TrimEnd()).Append("\n```\n\n");
            var summary = Path.Combine(run, DistillationRun.SummaryFile);
            if (File.Exists(summary)) s.Append(SummarySection(summary));
        }
        if (x.EvalFolder is { } eval) s.Append(EvalSection(eval, a.TorchDtype, x.DType));
        if (x.RunFolder is null && x.EvalFolder is null)
            s.Append("## Results\n\nNo distillation run or eval report was found beside the student, so none is quoted here.\n\n");

        s.Append("## Use\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n")
         .Append("model = AutoModelForCausalLM.from_pretrained(\"PATH\", trust_remote_code=True)\n")
         .Append("tokenizer = AutoTokenizer.from_pretrained(\"PATH\")\n")
         .Append("ids = tokenizer(\"Once upon a time\", return_tensors=\"pt\").input_ids\n")
         .Append("print(tokenizer.decode(model.generate(ids, max_new_tokens=64, do_sample=False)[0]))\n```\n\n")
         .Append("`combadistill_comba_core.py` holds the maths in plain PyTorch and runs without transformers ")
         .Append("(`core.load_pretrained(PATH)`). Pad batches on the right; left padding is refused, since every token enters the recurrent state.\n");
        return s.ToString();
    }

    /// <summary>The name of the teacher's folder: convert's --from may have named a weights file or an index in it.</summary>
    static string TeacherName(string recorded)
    {
        var path = Path.TrimEndingDirectorySeparator(recorded);
        var looksLikeFile = Path.GetExtension(path) is ".safetensors" or ".json" or ".bin" or ".pt" or ".pth";
        return Path.GetFileName(looksLikeFile ? Path.GetDirectoryName(path) ?? path : path) is { Length: > 0 } name ? name : path;
    }

    /// <summary>The teacher's folder as the conversion report recorded it (in the student, or in the run's student-init).</summary>
    static string? TeacherOf(Inputs x)
    {
        var candidates = new List<string> { Path.Combine(x.StudentFolder, ConversionReport.FileName) };
        if (x.RunFolder is not null) candidates.Add(Path.Combine(x.RunFolder, "student-init", ConversionReport.FileName));
        foreach (var path in candidates.Where(File.Exists))
        {
            try
            {
                if (JsonNode.Parse(File.ReadAllText(path)) is JsonObject j && j["teacher"] is JsonValue v && v.TryGetValue<string>(out var teacher))
                    return teacher;
            }
            catch (JsonException) { }   // a damaged report only costs the card this line
        }
        return null;
    }

    static string SummarySection(string path)
    {
        JsonObject j;
        try { j = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new InvalidInputException(path, "is not a JSON object"); }
        catch (JsonException e) { throw new InvalidInputException(path, $"not valid JSON ({e.Message})", e); }
        double? Num(string name) => j[name] is JsonValue v && v.TryGetValue<double>(out var d) ? d : null;
        var s = new StringBuilder("## Results of the distillation run\n\n| metric | value |\n| --- | ---: |\n");
        if (Num("teacher_perplexity") is { } t) s.Append($"| teacher held-out perplexity | {t.ToString("F4", CultureInfo.InvariantCulture)} |\n");
        if (Num("student_perplexity") is { } st) s.Append($"| student held-out perplexity | {st.ToString("F4", CultureInfo.InvariantCulture)} |\n");
        if (Num("perplexity_ratio") is { } r) s.Append($"| student ÷ teacher | {r.ToString("F4", CultureInfo.InvariantCulture)} |\n");
        if (Num("validation_tokens") is { } n) s.Append($"| held-out tokens scored | {n.ToString("N0", CultureInfo.InvariantCulture)} |\n");
        if (Num("seconds") is { } sec) s.Append($"| run time (s) | {sec.ToString("F0", CultureInfo.InvariantCulture)} |\n");
        return s.Append('\n').ToString();
    }

    /// <summary>
    /// The eval report (report.md) under the card's own heading: its title goes, its sections move one level down, and
    /// its plots stay out (they are not copied into the export). Eval ran on the student folder the export was made
    /// from, so where the export stores another dtype the card says so.
    /// </summary>
    static string EvalSection(string folder, string studentDtype, string exportDtype)
    {
        var md = Path.Combine(folder, "report.md");
        if (!File.Exists(md)) return "";
        var lines = File.ReadAllLines(md).Where(l => !l.TrimStart().StartsWith("![", StringComparison.Ordinal)).ToList();
        var title = lines.FindIndex(l => l.Trim().Length > 0);
        if (title >= 0 && lines[title].StartsWith("# ", StringComparison.Ordinal)) lines.RemoveAt(title);
        var body = string.Join("\n", lines.Select(l => l.StartsWith('#') ? "#" + l : l)).Trim();
        var note = studentDtype == exportDtype ? ""
            : $"Measured by `combadistill eval` on the student folder this export was made from (stored as {studentDtype}), not on this export's {exportDtype} weights.\n\n";
        return "## Evaluation\n\n" + note + body + "\n\n";
    }
}
