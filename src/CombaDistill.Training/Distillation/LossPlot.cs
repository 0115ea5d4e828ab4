using CombaDistill.IO;
using ScottPlot;

namespace CombaDistill.Distillation;

/// <summary>A stage's loss curves as a PNG: the training loss per logged step and the validation numbers, on a log scale (losses fall by orders of magnitude).</summary>
public static class LossPlot
{
    public static void Write(string path, string title, IReadOnlyList<TrainMetrics> train, IReadOnlyList<EvalMetrics> evals, int width = 900, int height = 520)
    {
        var plot = new Plot();
        plot.Title(title);
        plot.XLabel("tokens");
        plot.YLabel("loss (log scale)");
        AddSeries(plot, "train loss", train.Select(m => ((double)m.Tokens, m.Loss)), markers: false);
        AddSeries(plot, "eval alignment", evals.Where(e => e.Alignment is not null).Select(e => ((double)e.Tokens, e.Alignment!.Value)), markers: true);
        AddSeries(plot, "eval KL (T=1)", evals.Where(e => e.Kl is not null).Select(e => ((double)e.Tokens, e.Kl!.Value)), markers: true);
        AddSeries(plot, "eval student CE", evals.Select(e => ((double)e.Tokens, e.StudentCrossEntropy)), markers: true);
        AddSeries(plot, "eval teacher CE", evals.Where(e => e.TeacherCrossEntropy is not null).Select(e => ((double)e.Tokens, e.TeacherCrossEntropy!.Value)), markers: true);
        plot.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic
        {
            LabelFormatter = y => $"{Math.Pow(10, y):g3}",
            MinorTickGenerator = new ScottPlot.TickGenerators.LogMinorTickGenerator(),
            IntegerTicksOnly = true,
        };
        plot.ShowLegend(Alignment.UpperRight);
        AtomicFile.WriteAllBytes(path, plot.GetImageBytes(width, height, ImageFormat.Png));
    }

    static void AddSeries(Plot plot, string label, IEnumerable<(double X, double Y)> points, bool markers)
    {
        var kept = points.Where(p => p.Y > 0 && double.IsFinite(p.Y)).ToArray();
        if (kept.Length == 0) return;
        var series = plot.Add.Scatter(kept.Select(p => p.X).ToArray(), kept.Select(p => Math.Log10(p.Y)).ToArray());
        series.LegendText = label;
        series.MarkerSize = markers ? 6 : 0;
        series.LineWidth = markers ? 1 : 1.5f;
    }
}
