using CombaDistill.Modeling;
using CombaDistill.Tokenization;
using TorchSharp;

namespace CombaDistill.Evaluation;

public enum EvaluationTask { Perplexity, Agreement, MultipleChoice, Mqar, Passkey, Speed }

/// <summary>A loaded model with its tokenizer and what the report says about it.</summary>
public sealed record EvaluatedModel(ICausalLM Model, ITokenizer Tokenizer, ModelInfo Info)
{
    public static long ParameterCount(ICausalLM model) => model is torch.nn.Module module ? module.parameters().Sum(p => p.numel()) : 0;
}

/// <summary>
/// What to evaluate and how. Unset options get defaults from the models' context length
/// (<see cref="Evaluator.Defaults"/>).
/// </summary>
public sealed record EvaluationPlan
{
    public required IReadOnlySet<EvaluationTask> Tasks { get; init; }
    /// <summary>Text for perplexity and agreement (.txt, or .jsonl with "text").</summary>
    public string? DataPath { get; init; }
    public string? MultipleChoicePath { get; init; }
    /// <summary>Tokens of <see cref="DataPath"/> used, from its start.</summary>
    public int MaxTokens { get; init; } = 4096;
    public Windowing? Windowing { get; init; }
    public MqarOptions? Mqar { get; init; }
    public PasskeyOptions? Passkey { get; init; }
    public SpeedOptions? Speed { get; init; }

    /// <summary>The name of each task in --tasks (multiple choice is mc:FILE.jsonl).</summary>
    public static readonly IReadOnlyDictionary<string, EvaluationTask> TaskNames = new Dictionary<string, EvaluationTask>
    {
        ["ppl"] = EvaluationTask.Perplexity, ["agreement"] = EvaluationTask.Agreement, ["mqar"] = EvaluationTask.Mqar,
        ["passkey"] = EvaluationTask.Passkey, ["speed"] = EvaluationTask.Speed,
    };

    public static string NameOf(EvaluationTask task) => task == EvaluationTask.MultipleChoice ? "mc" : TaskNames.First(t => t.Value == task).Key;

    /// <summary>
    /// Throws unless the plan has what its tasks need: a teacher for agreement, a text file for ppl and agreement, a
    /// file for multiple choice. Cheap, so a caller runs it before loading any model; <paramref name="dataHint"/> ends
    /// the missing-text message (the CLI's word on its default tasks).
    /// </summary>
    public void CheckInputs(bool hasTeacher, string dataHint = "")
    {
        if (Tasks.Contains(EvaluationTask.Agreement) && !hasTeacher) throw new ArgumentException("the agreement task needs a teacher (--teacher)");
        var text = new[] { EvaluationTask.Perplexity, EvaluationTask.Agreement }.Where(Tasks.Contains).Select(NameOf).ToArray();
        if (text.Length > 0 && DataPath is null)
            throw new ArgumentException($"{string.Join(" and ", text)} need{(text.Length == 1 ? "s" : "")} a text file (--data FILE){dataHint}");
        if (Tasks.Contains(EvaluationTask.MultipleChoice) && MultipleChoicePath is null) throw new ArgumentException("multiple choice needs a file (mc:FILE.jsonl)");
    }

    /// <summary>Parses "ppl,agreement,mqar,passkey,speed,mc:FILE.jsonl" (any subset, any order).</summary>
    public static (HashSet<EvaluationTask> Tasks, string? MultipleChoicePath) ParseTasks(string list)
    {
        var tasks = new HashSet<EvaluationTask>();
        string? multipleChoice = null;
        foreach (var raw in list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (raw.StartsWith("mc:", StringComparison.Ordinal))
            {
                multipleChoice = raw[3..] is { Length: > 0 } file ? file : throw new ArgumentException("task 'mc:' needs a file: mc:FILE.jsonl");
                tasks.Add(EvaluationTask.MultipleChoice);
                continue;
            }
            tasks.Add(TaskNames.TryGetValue(raw, out var task) ? task
                : throw new ArgumentException($"unknown task '{raw}' (expected {string.Join(", ", TaskNames.Keys)}, mc:FILE.jsonl)"));
        }
        if (tasks.Count == 0) throw new ArgumentException("no tasks given");
        return (tasks, multipleChoice);
    }
}

/// <summary>Progress of a run: the step ("perplexity", "MQAR (teacher)", …) and how far it is.</summary>
public readonly record struct EvaluationProgress(string Step, int Done, int Total);

/// <summary>Runs the tasks of a plan on a model and, when given, its teacher, on identical inputs.</summary>
public static class Evaluator
{
    /// <summary>The plan with every unset option filled from the shorter context of the two models.</summary>
    public static EvaluationPlan Defaults(EvaluationPlan plan, ICausalLM model, ICausalLM? teacher)
    {
        var context = Math.Min(model.Config.MaxPositionEmbeddings, teacher?.Config.MaxPositionEmbeddings ?? int.MaxValue);
        var longest = Math.Max(64, Math.Min(context, 1024));
        int[] lengths = [longest / 4, longest / 2, longest];
        return plan with
        {
            Windowing = plan.Windowing ?? new Windowing(Math.Min(context, plan.MaxTokens)),
            Mqar = plan.Mqar ?? new MqarOptions([4, 8, 16, 32], lengths),
            Passkey = plan.Passkey ?? new PasskeyOptions(lengths, [0, 0.25, 0.5, 0.75, 1]),
            // The KV cache allocates in doublings from 256 tokens, so at these lengths what it holds is what it allocated.
            Speed = plan.Speed ?? new SpeedOptions([256, 512, 1024, 2048]),
        };
    }

    public static EvaluationReport Run(EvaluatedModel model, EvaluatedModel? teacher, EvaluationPlan plan,
        IProgress<EvaluationProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        plan = Defaults(plan, model.Model, teacher?.Model);
        var tasks = plan.Tasks;
        plan.CheckInputs(teacher is not null);
        if (teacher is not null)
        {
            TokenizerCompatibility.Check(model.Tokenizer, model.Info.Path, teacher.Tokenizer, teacher.Info.Path, plan.DataPath);
            if (model.Model.Config.VocabSize != teacher.Model.Config.VocabSize)
                throw new InvalidInputException(Path.Combine(model.Info.Path, "config.json"),
                    $"vocab_size {model.Model.Config.VocabSize} differs from the teacher's {teacher.Model.Config.VocabSize}");
        }
        // Task files are read before any model runs, so a malformed one fails in a second, not after an hour.
        var tokens = plan.DataPath is null || !(tasks.Contains(EvaluationTask.Perplexity) || tasks.Contains(EvaluationTask.Agreement))
            ? null : EvaluationText.LoadTokens(plan.DataPath, model.Tokenizer, plan.MaxTokens);
        var items = tasks.Contains(EvaluationTask.MultipleChoice) ? MultipleChoice.Load(plan.MultipleChoicePath!) : null;

        IProgress<(int, int)> Step(string name) => new StepProgress(name, progress);
        string Named(string task, EvaluatedModel who) => teacher is null ? task : $"{task} ({(ReferenceEquals(who, teacher) ? "teacher" : "model")})";

        var report = new EvaluationReport { Model = model.Info, Teacher = teacher?.Info, Created = DateTimeOffset.UtcNow };
        if (tokens is not null)
        {
            var text = TextMetrics.Evaluate(model.Model, teacher?.Model, tokens, plan.Windowing!, Step(teacher is null ? "perplexity" : "perplexity and agreement"), cancellationToken);
            report = report with
            {
                Perplexity = tasks.Contains(EvaluationTask.Perplexity) ? new PerplexitySection(plan.DataPath!, text.Windowing, text.Model, text.Teacher) : null,
                Agreement = tasks.Contains(EvaluationTask.Agreement) ? text.Agreement : null,
            };
        }
        if (items is not null)
        {
            MultipleChoiceResult Score(EvaluatedModel m) => MultipleChoice.Evaluate(m.Model, m.Tokenizer, items, Step(Named("multiple choice", m)), cancellationToken);
            report = report with { MultipleChoice = new MultipleChoiceSection(plan.MultipleChoicePath!, Score(model), teacher is null ? null : Score(teacher)) };
        }
        if (tasks.Contains(EvaluationTask.Mqar))
        {
            var pool = Mqar.WordTokens(model.Tokenizer);
            IReadOnlyList<MqarCell> Score(EvaluatedModel m) => Mqar.Evaluate(m.Model, pool, plan.Mqar!, Step(Named("MQAR", m)), cancellationToken);
            report = report with { Mqar = new MqarSection(plan.Mqar!, Score(model), teacher is null ? null : Score(teacher)) };
        }
        if (tasks.Contains(EvaluationTask.Passkey))
        {
            IReadOnlyList<PasskeyCell> Score(EvaluatedModel m) => Passkey.Evaluate(m.Model, m.Tokenizer, plan.Passkey!, Step(Named("passkey", m)), cancellationToken);
            report = report with { Passkey = new PasskeySection(plan.Passkey!, Score(model), teacher is null ? null : Score(teacher)) };
        }
        if (tasks.Contains(EvaluationTask.Speed))
        {
            IReadOnlyList<SpeedPoint> Measure(EvaluatedModel m) => GenerationSpeed.Measure(m.Model, plan.Speed!, Step(Named("speed", m)), cancellationToken);
            report = report with { Speed = new SpeedSection(model.Model.Device.ToString(), Measure(model), teacher is null ? null : Measure(teacher)) };
        }
        return report;
    }

    sealed class StepProgress(string step, IProgress<EvaluationProgress>? sink) : IProgress<(int Done, int Total)>
    {
        public void Report((int Done, int Total) value) => sink?.Report(new EvaluationProgress(step, value.Done, value.Total));
    }
}
