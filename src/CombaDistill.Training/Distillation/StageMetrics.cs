using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using CombaDistill.IO;
using TorchSharp;

namespace CombaDistill.Distillation;

/// <summary>One logged optimizer step: the mean loss of its micro-batches, the schedule's lr and the gradient norm before clipping.</summary>
public sealed record TrainMetrics(long Step, long Tokens, double Loss, double LearningRate, double GradNorm, double TokensPerSecond, double ElapsedSeconds,
    IReadOnlyList<double>? LayerLosses = null);

/// <summary>
/// A validation pass: per-token cross-entropy (nats) of student and teacher on the same held-out windows, KL(teacher ‖
/// student) at T = 1, and for alignment stages the alignment loss.
/// </summary>
public sealed record EvalMetrics(long Step, long Tokens, double StudentCrossEntropy, double? TeacherCrossEntropy, double? Kl, double? Alignment)
{
    public double StudentPerplexity => Math.Exp(StudentCrossEntropy);
    public double? TeacherPerplexity => TeacherCrossEntropy is { } ce ? Math.Exp(ce) : null;
}

/// <summary>
/// A stage's metrics: <c>metrics.jsonl</c> (one JSON object per line, <c>"kind": "train"</c> or <c>"eval"</c>), TensorBoard
/// event files under the run's <c>tensorboard/STAGE</c>, and the points for the stage's loss plot.
/// </summary>
public sealed class StageMetrics
{
    public const string FileName = "metrics.jsonl";

    // A diverged step's loss is NaN: written as "NaN" (and read back), not refused by the serializer mid-run.
    static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    readonly string path;
    readonly string stage;
    readonly bool readOnly;
    readonly TorchSharp.Modules.SummaryWriter? tensorboard;
    readonly List<TrainMetrics> train = [];
    readonly List<EvalMetrics> evals = [];

    /// <param name="tensorboardFolder">where event files go; null for none</param>
    /// <param name="keepUpToStep">on resume, the checkpoint's step: lines logged after it (by the interrupted session) are dropped, so the file reads as one run; −1 on a fresh start</param>
    /// <param name="readOnly">keep the metrics in memory only, writing nothing (the ranks of a data-parallel job other than rank 0)</param>
    public StageMetrics(string stageFolder, string stage, string? tensorboardFolder, long keepUpToStep, bool readOnly = false)
    {
        path = Path.Combine(stageFolder, FileName);
        this.stage = stage;
        this.readOnly = readOnly;
        if (File.Exists(path))
        {
            var kept = new List<string>();
            foreach (var line in ReadLines(path))
            {
                if (!TryParse(line, out var metrics)) continue;     // a line cut short by a kill
                var step = metrics is TrainMetrics t ? t.Step : ((EvalMetrics)metrics).Step;
                if (step > keepUpToStep) continue;
                kept.Add(line);
                if (metrics is TrainMetrics tm) train.Add(tm); else evals.Add((EvalMetrics)metrics);
            }
            if (!readOnly) AtomicFile.WriteAllText(path, string.Concat(kept.Select(l => l + "\n")));
        }
        if (tensorboardFolder is not null && !readOnly) tensorboard = torch.utils.tensorboard.SummaryWriter(tensorboardFolder);
    }

    public IReadOnlyList<TrainMetrics> Train => train;
    public IReadOnlyList<EvalMetrics> Evals => evals;

    public void Add(TrainMetrics m)
    {
        train.Add(m);
        Append("train", m);
        tensorboard?.add_scalar($"{stage}/loss", (float)m.Loss, (int)m.Step);
        tensorboard?.add_scalar($"{stage}/lr", (float)m.LearningRate, (int)m.Step);
        tensorboard?.add_scalar($"{stage}/grad_norm", (float)m.GradNorm, (int)m.Step);
        tensorboard?.add_scalar($"{stage}/tokens_per_s", (float)m.TokensPerSecond, (int)m.Step);
    }

    public void Add(EvalMetrics m)
    {
        evals.Add(m);
        Append("eval", m);
        tensorboard?.add_scalar($"{stage}/eval_student_ppl", (float)m.StudentPerplexity, (int)m.Step);
        if (m.TeacherPerplexity is { } teacher) tensorboard?.add_scalar($"{stage}/eval_teacher_ppl", (float)teacher, (int)m.Step);
        if (m.Kl is { } kl) tensorboard?.add_scalar($"{stage}/eval_kl", (float)kl, (int)m.Step);
        if (m.Alignment is { } alignment) tensorboard?.add_scalar($"{stage}/eval_alignment", (float)alignment, (int)m.Step);
    }

    void Append(string kind, object metrics)
    {
        if (readOnly) return;
        var line = JsonSerializer.SerializeToNode(metrics, metrics.GetType(), Json)!.AsObject();
        line.Insert(0, "kind", kind);
        line.Insert(1, "stage", stage);
        File.AppendAllText(path, line.ToJsonString() + "\n");
    }

    static bool TryParse(string line, out object metrics)
    {
        metrics = null!;
        try
        {
            if (JsonNode.Parse(line) is not JsonObject j) return false;
            var kind = j["kind"]?.GetValue<string>();
            metrics = kind switch
            {
                "train" => j.Deserialize<TrainMetrics>(Json)!,
                "eval" => j.Deserialize<EvalMetrics>(Json)!,
                _ => null!,
            };
            return metrics is not null;
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException or NotSupportedException or ArgumentException)
        {
            return false;
        }
    }

    /// <summary>
    /// Reads a metrics.jsonl (train lines first, eval lines second), e.g. for a summary or a report. A line that is
    /// not a metrics record (cut short by a kill, damaged) is skipped, as the running stage skips it, and counted in
    /// <c>Skipped</c>: a finished stage's log must never block a resume.
    /// </summary>
    public static (IReadOnlyList<TrainMetrics> Train, IReadOnlyList<EvalMetrics> Evals) Read(string file) => Read(file, out _);

    /// <inheritdoc cref="Read(string)"/>
    public static (IReadOnlyList<TrainMetrics> Train, IReadOnlyList<EvalMetrics> Evals) Read(string file, out int skipped)
    {
        var train = new List<TrainMetrics>();
        var evals = new List<EvalMetrics>();
        skipped = 0;
        foreach (var line in ReadLines(file))
        {
            if (!TryParse(line, out var m)) { skipped++; continue; }
            if (m is TrainMetrics t) train.Add(t); else evals.Add((EvalMetrics)m);
        }
        return (train, evals);
    }

    /// <summary>The file's non-empty lines; bytes that are not UTF-8 become U+FFFD and fail to parse like any damage.</summary>
    static IEnumerable<string> ReadLines(string file) => File.ReadAllLines(file).Where(l => l.Length > 0);
}
