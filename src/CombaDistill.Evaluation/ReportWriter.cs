using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using CombaDistill.IO;

namespace CombaDistill.Evaluation;

/// <summary>Writes a report as report.json, report.md and PNG plots, each file atomically.</summary>
public static class ReportWriter
{
    static readonly JsonSerializerOptions JsonStyle = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        Converters = { new JsonStringEnumConverter() },
    };

    public static string Json(EvaluationReport report) => JsonSerializer.Serialize(report, JsonStyle) + "\n";

    /// <summary>Creates <paramref name="folder"/> if needed and writes the report into it; returns the files written.</summary>
    public static IReadOnlyList<string> Write(EvaluationReport report, string folder)
    {
        OutputPath.RequireFolder(folder, "--out");
        Directory.CreateDirectory(folder);
        var written = new List<string>();
        void Save(string name, byte[] bytes)
        {
            var path = Path.Combine(folder, name);
            AtomicFile.WriteAllBytes(path, bytes);
            written.Add(path);
        }
        foreach (var (name, png) in ReportPlots.Render(report)) Save(name, png);
        Save("report.json", Encoding.UTF8.GetBytes(Json(report)));
        Save("report.md", Encoding.UTF8.GetBytes(Markdown(report, ReportPlots.Names(report))));
        return written;
    }

    public static string Format(double? value, string format) =>
        value is { } v ? (double.IsFinite(v) ? v.ToString(format, CultureInfo.InvariantCulture) : v.ToString(CultureInfo.InvariantCulture)) : "—";

    public static string Markdown(EvaluationReport report, IEnumerable<string> plots)
    {
        var md = new StringBuilder();
        var paired = report.Teacher is not null;
        var modelName = paired ? "student" : "model";
        md.AppendLine("# Evaluation report").AppendLine();
        md.AppendLine($"Created {report.Created:yyyy-MM-dd HH:mm} UTC.").AppendLine();
        md.AppendLine("| | folder | type | parameters | tokenizer |").AppendLine("|---|---|---|---:|---|");
        md.AppendLine($"| {modelName} | `{report.Model.Path}` | {report.Model.ModelType} | {report.Model.Parameters:N0} | {report.Model.Tokenizer} |");
        if (report.Teacher is { } t) md.AppendLine($"| teacher | `{t.Path}` | {t.ModelType} | {t.Parameters:N0} | {t.Tokenizer} |");
        md.AppendLine();

        md.AppendLine("## Summary").AppendLine();
        md.AppendLine(paired ? "| section | metric | student | teacher | student ÷ teacher |\n|---|---|---:|---:|---:|" : "| section | metric | value |\n|---|---|---:|");
        foreach (var row in report.Rows())
            md.AppendLine(paired
                ? $"| {row.Section} | {row.Metric} | {Format(row.Model, row.Format)} | {Format(row.Teacher, row.Format)} | {Format(row.Ratio, "F3")} |"
                : $"| {row.Section} | {row.Metric} | {Format(row.Model, row.Format)} |");
        md.AppendLine();

        if (report.Perplexity is { } p)
        {
            md.AppendLine("## Perplexity").AppendLine();
            md.AppendLine($"On `{p.Data}`: each document is BOS + its tokens, documents are joined into one stream, and the stream is read in " +
                (p.Windowing.Stride is { } s
                    ? $"sliding windows of {p.Windowing.Length} tokens every {s} tokens (each token scored once, with at least {p.Windowing.Length - s} tokens of context after the first window)."
                    : $"packed windows of {p.Windowing.Length} tokens (side by side; the first token of each window is context only).")
                + " NLL is the mean negative log-likelihood in nats per scored token; perplexity is exp(NLL).").AppendLine();
        }
        if (report.Agreement is not null)
            md.AppendLine("Agreement: on the same positions, the share where the student's argmax equals the teacher's, and the mean KL(teacher ‖ student) in nats per token.").AppendLine();
        if (report.MultipleChoice is { } mc)
        {
            md.AppendLine("## Multiple choice").AppendLine();
            md.AppendLine($"`{mc.File}`, {mc.Model.Items} items, chance {mc.Model.Chance:F3}. A choice's score is the sum of its tokens' log-probabilities after the context; " +
                "the length-normalised score divides by its length in characters.").AppendLine();
        }
        if (report.Mqar is { } m)
        {
            md.AppendLine("## MQAR (multi-query associative recall)").AppendLine();
            md.AppendLine($"{m.Options.Samples} sequences per cell: key–value pairs, filler, then every key again; accuracy of the value predicted at each key.").AppendLine();
            Grid(md, "pairs \\ tokens", m.Model.Select(c => c.Pairs), m.Model.Select(c => c.Length),
                (pairs, length) => Cell(m.Model.FirstOrDefault(c => c.Pairs == pairs && c.Length == length)?.Accuracy,
                    m.Teacher?.FirstOrDefault(c => c.Pairs == pairs && c.Length == length)?.Accuracy), paired);
        }
        if (report.Passkey is { } k)
        {
            md.AppendLine("## Passkey retrieval").AppendLine();
            md.AppendLine($"{k.Options.Trials} {(k.Options.Trials == 1 ? "key" : "keys")} per cell; a key counts when greedy decoding would write all its tokens. Depth 0 puts it first in the filler, 1 last.").AppendLine();
            Grid(md, "depth \\ tokens", k.Model.Select(c => c.Depth), k.Model.Select(c => c.Length),
                (depth, length) => Cell(k.Model.FirstOrDefault(c => c.Depth == depth && c.Length == length)?.Accuracy,
                    k.Teacher?.FirstOrDefault(c => c.Depth == depth && c.Length == length)?.Accuracy), paired);
        }
        if (report.Speed is { } sp)
        {
            md.AppendLine("## Generation speed and memory").AppendLine();
            md.AppendLine($"Greedy decoding from BOS on {sp.Device}, one token per step through the decoding state. Tokens/s is over the steps since the previous length; " +
                "state is the bytes of tensors the decoding state has allocated (the KV cache grows in doublings from 256 tokens); peak RSS is the process's since that model's run began.").AppendLine();
            md.AppendLine("| model | tokens | tokens/s | state MiB | RSS MiB | peak RSS MiB |").AppendLine("|---|---:|---:|---:|---:|---:|");
            foreach (var (who, points) in new[] { (modelName, sp.Model), ("teacher", sp.Teacher) })
                foreach (var point in points ?? [])
                    md.AppendLine($"| {who} | {point.Length} | {point.TokensPerSecond:F1} | {EvaluationReport.Mib(point.StateBytes):F3} | {EvaluationReport.Mib(point.RssBytes):F1} | {EvaluationReport.Mib(point.PeakRssBytes):F1} |");
            md.AppendLine();
        }
        var images = plots.ToList();
        if (images.Count > 0)
        {
            md.AppendLine("## Plots").AppendLine();
            foreach (var image in images) md.AppendLine($"![{Path.GetFileNameWithoutExtension(image)}]({image})").AppendLine();
        }
        return md.ToString();
    }

    static string Cell(double? model, double? teacher) => teacher is null ? Format(model, "F2") : $"{Format(model, "F2")} / {Format(teacher, "F2")}";

    static void Grid<TRow, TColumn>(StringBuilder md, string corner, IEnumerable<TRow> rows, IEnumerable<TColumn> columns, Func<TRow, TColumn, string> cell, bool paired)
    {
        var rowKeys = rows.Distinct().Order().ToList();
        var columnKeys = columns.Distinct().Order().ToList();
        if (paired) md.AppendLine("Each cell: student / teacher.").AppendLine();
        md.AppendLine($"| {corner} | {string.Join(" | ", columnKeys)} |");
        md.AppendLine($"|---|{string.Concat(columnKeys.Select(_ => "---:|"))}");
        foreach (var row in rowKeys)
            md.AppendLine($"| {row} | {string.Join(" | ", columnKeys.Select(c => cell(row, c)))} |");
        md.AppendLine();
    }
}
