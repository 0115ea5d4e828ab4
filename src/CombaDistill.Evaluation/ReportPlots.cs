using ScottPlot;

namespace CombaDistill.Evaluation;

/// <summary>
/// The plots users look at, as PNG bytes: recall (MQAR, passkey), decoding-state memory and
/// tokens/s, each against sequence length, the student solid and the teacher dashed.
/// </summary>
public static class ReportPlots
{
    const int Width = 900, Height = 560;

    /// <summary>The file names <see cref="Render"/> produces for this report.</summary>
    public static IEnumerable<string> Names(EvaluationReport report)
    {
        if (report.Mqar is { Model.Count: > 0 }) yield return "mqar_recall.png";
        if (report.Passkey is { Model.Count: > 0 }) yield return "passkey_recall.png";
        if (report.Speed is { Model.Count: > 0 })
        {
            yield return "memory.png";
            yield return "tokens_per_second.png";
        }
    }

    public static IEnumerable<(string Name, byte[] Png)> Render(EvaluationReport report)
    {
        var model = report.Teacher is null ? "model" : "student";
        if (report.Mqar is { Model.Count: > 0 } m)
        {
            var plot = NewPlot("MQAR recall vs sequence length", "sequence length (tokens)", "accuracy");
            var palette = new ScottPlot.Palettes.Category10();
            var pairCounts = m.Model.Select(c => c.Pairs).Distinct().Order().ToList();
            foreach (var (pairs, i) in pairCounts.Select((p, i) => (p, i)))
            {
                var color = palette.GetColor(i);
                Line(plot, m.Model.Where(c => c.Pairs == pairs).Select(c => ((double)c.Length, c.Accuracy)), $"{model}, {pairs} pairs", color, dashed: false);
                if (m.Teacher is { } t)
                    Line(plot, t.Where(c => c.Pairs == pairs).Select(c => ((double)c.Length, c.Accuracy)), $"teacher, {pairs} pairs", color, dashed: true);
            }
            plot.Axes.SetLimitsY(-0.05, 1.05);
            yield return ("mqar_recall.png", Png(plot));
        }
        if (report.Passkey is { Model.Count: > 0 } k)
        {
            var plot = NewPlot("Passkey retrieval vs context length (mean over depths)", "context length (tokens)", "accuracy");
            static IEnumerable<(double, double)> ByLength(IEnumerable<PasskeyCell> cells) =>
                cells.GroupBy(c => c.Length).OrderBy(g => g.Key).Select(g => ((double)g.Key, g.Average(c => c.Accuracy)));
            Line(plot, ByLength(k.Model), model, Colors.C0, dashed: false);
            if (k.Teacher is { } t) Line(plot, ByLength(t), "teacher", Colors.C1, dashed: true);
            plot.Axes.SetLimitsY(-0.05, 1.05);
            yield return ("passkey_recall.png", Png(plot));
        }
        if (report.Speed is { Model.Count: > 0 } s)
        {
            var memory = NewPlot("Decoding-state memory vs generated length", "tokens generated (state length)", "decoding state (MiB)");
            Line(memory, s.Model.Select(p => ((double)p.Length, EvaluationReport.Mib(p.StateBytes))), model, Colors.C0, dashed: false);
            if (s.Teacher is { } t) Line(memory, t.Select(p => ((double)p.Length, EvaluationReport.Mib(p.StateBytes))), "teacher (KV cache)", Colors.C1, dashed: true);
            memory.Axes.AutoScale();
            memory.Axes.SetLimitsY(0, Math.Max(1e-6, memory.Axes.GetLimits().Top * 1.05));
            yield return ("memory.png", Png(memory));

            var speed = NewPlot($"Generation speed vs length ({s.Device})", "tokens generated (state length)", "tokens / s");
            Line(speed, s.Model.Select(p => ((double)p.Length, p.TokensPerSecond)), model, Colors.C0, dashed: false);
            if (s.Teacher is { } t2) Line(speed, t2.Select(p => ((double)p.Length, p.TokensPerSecond)), "teacher", Colors.C1, dashed: true);
            speed.Axes.AutoScale();
            speed.Axes.SetLimitsY(0, Math.Max(1e-6, speed.Axes.GetLimits().Top * 1.05));
            yield return ("tokens_per_second.png", Png(speed));
        }
    }

    static Plot NewPlot(string title, string x, string y)
    {
        var plot = new Plot();
        plot.Title(title);
        plot.XLabel(x);
        plot.YLabel(y);
        // Outside the data area, so it never hides a line lying along an axis (a flat state, an accuracy of 0).
        plot.ShowLegend(Edge.Right);
        return plot;
    }

    static void Line(Plot plot, IEnumerable<(double X, double Y)> points, string label, Color color, bool dashed)
    {
        var list = points.ToList();
        var scatter = plot.Add.Scatter(list.Select(p => p.X).ToArray(), list.Select(p => p.Y).ToArray(), color);
        scatter.LegendText = label;
        scatter.LineWidth = 2;
        scatter.MarkerSize = 7;
        if (dashed) scatter.LinePattern = LinePattern.Dashed;
    }

    static byte[] Png(Plot plot) => plot.GetImageBytes(Width, Height, ImageFormat.Png);
}
