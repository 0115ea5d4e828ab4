using CombaDistill.Modeling;

namespace CombaDistill.Evaluation;

/// <summary>What was evaluated: the folder, its architecture, its size and its tokenizer.</summary>
public sealed record ModelInfo(string Path, string ModelType, long Parameters, string Tokenizer);

public sealed record PerplexitySection(string Data, Windowing Windowing, PerplexityResult Model, PerplexityResult? Teacher)
{
    public double? PerplexityRatio => Teacher is null ? null : Ratio.Of(Model.Perplexity, Teacher.Perplexity);
}

public sealed record MultipleChoiceSection(string File, MultipleChoiceResult Model, MultipleChoiceResult? Teacher)
{
    public string Normalisation => "characters";
    public double? AccuracyRatio => Teacher is null ? null : Ratio.Of(Model.Accuracy, Teacher.Accuracy);
    public double? NormalisedAccuracyRatio => Teacher is null ? null : Ratio.Of(Model.NormalisedAccuracy, Teacher.NormalisedAccuracy);
    /// <summary>(accuracy − chance) over the teacher's: how much of the teacher's skill the model kept.</summary>
    public double? AboveChanceRatio => Teacher is null ? null : Model.AboveChanceRatio(Teacher);
}

public sealed record MqarSection(MqarOptions Options, IReadOnlyList<MqarCell> Model, IReadOnlyList<MqarCell>? Teacher);

public sealed record PasskeySection(PasskeyOptions Options, IReadOnlyList<PasskeyCell> Model, IReadOnlyList<PasskeyCell>? Teacher);

public sealed record SpeedSection(string Device, IReadOnlyList<SpeedPoint> Model, IReadOnlyList<SpeedPoint>? Teacher);

/// <summary>One line of the summary table: a metric for the model, for the teacher, and model ÷ teacher.</summary>
public sealed record ReportRow(string Section, string Metric, double? Model, double? Teacher, string Format = "F4")
{
    public double? Ratio => Model is { } m && Teacher is { } t ? Evaluation.Ratio.Of(m, t) : null;
}

/// <summary>Everything one <c>eval</c> run measured; sections that were not asked for are null.</summary>
public sealed record EvaluationReport
{
    public required ModelInfo Model { get; init; }
    public ModelInfo? Teacher { get; init; }
    public required DateTimeOffset Created { get; init; }
    public PerplexitySection? Perplexity { get; init; }
    public AgreementResult? Agreement { get; init; }
    public MultipleChoiceSection? MultipleChoice { get; init; }
    public MqarSection? Mqar { get; init; }
    public PasskeySection? Passkey { get; init; }
    public SpeedSection? Speed { get; init; }

    /// <summary>Every metric as a row, in the order the tables show them.</summary>
    public IEnumerable<ReportRow> Rows()
    {
        if (Perplexity is { } p)
        {
            var windows = p.Windowing.Stride is { } s ? $"sliding {p.Windowing.Length}/{s}" : $"packed {p.Windowing.Length}";
            yield return new("perplexity", $"tokens scored ({windows})", p.Model.Tokens, p.Teacher?.Tokens, "N0");
            yield return new("perplexity", "NLL (nats/token)", p.Model.Nll, p.Teacher?.Nll);
            yield return new("perplexity", "perplexity", p.Model.Perplexity, p.Teacher?.Perplexity);
        }
        if (Agreement is { } a)
        {
            yield return new("agreement", "top-1 agreement with teacher", a.Top1Agreement, null);
            yield return new("agreement", "mean KL(teacher ‖ model) (nats/token)", a.MeanKl, null);
        }
        if (MultipleChoice is { } mc)
        {
            yield return new("multiple choice", $"accuracy ({mc.Model.Items} items, chance {mc.Model.Chance:F3})", mc.Model.Accuracy, mc.Teacher?.Accuracy);
            yield return new("multiple choice", "accuracy, length-normalised (chars)", mc.Model.NormalisedAccuracy, mc.Teacher?.NormalisedAccuracy);
            if (mc.AboveChanceRatio is { } r) yield return new("multiple choice", "accuracy above chance ÷ teacher's", r, null);
        }
        if (Mqar is { } m)
            foreach (var cell in m.Model)
                yield return new("MQAR", $"accuracy, {cell.Pairs} pairs, {cell.Length} tokens", cell.Accuracy,
                    m.Teacher?.FirstOrDefault(t => t.Pairs == cell.Pairs && t.Length == cell.Length)?.Accuracy);
        if (Passkey is { } k)
        {
            foreach (var length in k.Model.Select(c => c.Length).Distinct())
                yield return new("passkey", $"accuracy at {length} tokens (all depths)", MeanAccuracy(k.Model, length),
                    k.Teacher is null ? null : MeanAccuracy(k.Teacher, length));
        }
        if (Speed is { } sp)
        {
            foreach (var point in sp.Model)
            {
                var teacher = sp.Teacher?.FirstOrDefault(t => t.Length == point.Length);
                yield return new("speed", $"tokens/s at {point.Length}", point.TokensPerSecond, teacher?.TokensPerSecond, "F1");
                yield return new("memory", $"decoding state MiB at {point.Length}", Mib(point.StateBytes), teacher is null ? null : Mib(teacher.StateBytes), "F3");
                yield return new("memory", $"peak RSS MiB up to {point.Length}", Mib(point.PeakRssBytes), teacher is null ? null : Mib(teacher.PeakRssBytes), "F1");
            }
        }
    }

    static double MeanAccuracy(IEnumerable<PasskeyCell> cells, int length) => cells.Where(c => c.Length == length).Average(c => c.Accuracy);

    public static double Mib(long bytes) => bytes / (1024.0 * 1024.0);
}

static class Ratio
{
    public static double? Of(double model, double teacher) => teacher != 0 && double.IsFinite(teacher) && double.IsFinite(model) ? model / teacher : null;
}
