using System.Text.Json.Nodes;
using CombaDistill.Evaluation;
using CombaDistill.IO;
using CombaDistill.Tests.Modeling;
using CombaDistill.Tests.Support;
using CombaDistill.Tokenization;

namespace CombaDistill.Tests.Evaluation;

/// <summary>A tokenizer that encodes like another except where told: a stand-in for a student that ships a different vocabulary.</summary>
sealed class AlteredTokenizer(ITokenizer inner, int? vocabSize = null, string? divergesOn = null) : ITokenizer
{
    public int VocabSize => vocabSize ?? inner.VocabSize;
    public int BosId => inner.BosId;
    public int EosId => inner.EosId;
    public string Description => "altered " + inner.Description;
    public int[] Encode(string text, bool addBos)
    {
        var ids = inner.Encode(text, addBos);
        return divergesOn is not null && text.Contains(divergesOn, StringComparison.Ordinal) ? [.. ids, 7] : ids;
    }
    public string Decode(IReadOnlyList<int> ids) => inner.Decode(ids);
}

public class EvaluatorTests(ImportedStories260K stories) : IClassFixture<ImportedStories260K>
{
    EvaluatedModel Teacher => new(stories.Model, stories.Tokenizer, new ModelInfo(stories.Folder, "llama", 260_032, stories.Tokenizer.Description));

    static EvaluationPlan SmallPlan(string data, string? multipleChoice = null) => new()
    {
        Tasks = EvaluationPlan.ParseTasks("ppl,agreement,mqar,passkey,speed" + (multipleChoice is null ? "" : $",mc:{multipleChoice}")).Tasks,
        DataPath = data,
        MultipleChoicePath = multipleChoice,
        MaxTokens = 512,
        Mqar = new MqarOptions([4], [64, 128], Samples: 2),
        Passkey = new PasskeyOptions([128], [0, 1], Trials: 1),
        Speed = new SpeedOptions([8, 16], Warmup: 1),
    };

    [Fact]
    public void The_teacher_against_itself_scores_the_reference_NLL_ratio_1_and_writes_every_report_file()
    {
        using var temp = new TempDir();
        var mc = temp["mc.jsonl"];
        File.WriteAllLines(mc, [
            """{"query": "Once upon a time, there was a little girl named", "choices": [" Lily.", " table."], "gold": 0}""",
            """{"query": "The sun was", "choices": [" shining.", " a purple dog."], "label": 0}""",
        ]);
        var steps = new List<EvaluationProgress>();
        var report = Evaluator.Run(Teacher, Teacher, SmallPlan(Shared.TinyStoriesValid, mc), new SyncProgress(steps.Add), TestContext.Current.CancellationToken);

        Assert.Equal(1.3112, report.Perplexity!.Model.Nll, 0.001);
        Assert.Equal(511, report.Perplexity.Model.Tokens);
        Assert.Equal("packed", report.Perplexity.Windowing.Mode);
        Assert.Equal(1.0, report.Perplexity.PerplexityRatio);
        Assert.Equal((1.0, 0.0), (report.Agreement!.Top1Agreement, report.Agreement.MeanKl));
        Assert.Equal(report.MultipleChoice!.Model, report.MultipleChoice.Teacher);
        Assert.Equal(report.Mqar!.Model, report.Mqar.Teacher);
        Assert.Equal(report.Passkey!.Model, report.Passkey.Teacher);
        Assert.Equal(report.Speed!.Model.Select(p => p.StateBytes), report.Speed.Teacher!.Select(p => p.StateBytes));
        // every row with a teacher value has the ratio 1, except timings and process memory, which are measured twice
        Assert.All(report.Rows().Where(r => r.Teacher is not null && r.Section is not ("speed" or "memory")), r => Assert.True(r.Ratio is null or 1.0, $"{r.Metric}: {r.Ratio}"));
        Assert.Contains(steps, s => s.Step == "MQAR (teacher)" && s.Done == s.Total);

        var folder = temp["report"];
        var files = ReportWriter.Write(report, folder);
        Assert.Equal(["memory.png", "mqar_recall.png", "passkey_recall.png", "report.json", "report.md", "tokens_per_second.png"],
            Directory.GetFiles(folder).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Equal(files.Order(), Directory.GetFiles(folder).Order());
        foreach (var png in Directory.GetFiles(folder, "*.png"))
        {
            var bytes = File.ReadAllBytes(png);
            Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], bytes[..4]);
            // a blank canvas of this size compresses to about 2 KB; lines make it several times larger
            // (with fonts ~12 KB+; 7.5 KB on a host without fonts, where the labels are missing)
            Assert.True(bytes.Length > 5_000, $"{png}: {bytes.Length} bytes");
        }
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "report.json")))!;
        Assert.Equal(report.Perplexity.Model.Nll, json["perplexity"]!["model"]!["nll"]!.GetValue<double>());
        Assert.Equal(1.0, json["perplexity"]!["perplexityRatio"]!.GetValue<double>());
        Assert.Equal(1.0, json["agreement"]!["top1Agreement"]!.GetValue<double>());
        Assert.Equal(2, json["speed"]!["teacher"]!.AsArray().Count);
        var md = File.ReadAllText(Path.Combine(folder, "report.md"));
        Assert.Contains("| perplexity | NLL (nats/token) | 1.31", md);
        Assert.Contains("![memory](memory.png)", md);
        Assert.Contains("packed windows of 512 tokens", md);
    }

    [Fact]
    public void Without_a_teacher_only_the_models_own_metrics_are_reported()
    {
        var plan = SmallPlan(Shared.TinyStoriesValid) with { Tasks = EvaluationPlan.ParseTasks("ppl,speed").Tasks };
        var report = Evaluator.Run(Teacher, null, plan, cancellationToken: TestContext.Current.CancellationToken);
        Assert.Null(report.Perplexity!.Teacher);
        Assert.Null(report.Speed!.Teacher);
        Assert.Null(report.Agreement);
        Assert.Null(report.Mqar);
        Assert.All(report.Rows(), r => Assert.Null(r.Teacher));
        Assert.DoesNotContain("teacher", ReportWriter.Markdown(report, []).Split("## Summary")[1].Split('\n')[2]);

        Assert.Contains("needs a teacher", Assert.Throws<ArgumentException>(() => Evaluator.Run(Teacher, null, SmallPlan(Shared.TinyStoriesValid), cancellationToken: TestContext.Current.CancellationToken)).Message);
    }

    [Fact]
    public void Task_lists_parse_and_unknown_tasks_are_refused()
    {
        var (tasks, file) = EvaluationPlan.ParseTasks("ppl, speed,mc:data/hellaswag.jsonl");
        Assert.Equal([EvaluationTask.Perplexity, EvaluationTask.MultipleChoice, EvaluationTask.Speed], tasks.Order());
        Assert.Equal("data/hellaswag.jsonl", file);
        Assert.Contains("unknown task 'perplexity'", Assert.Throws<ArgumentException>(() => EvaluationPlan.ParseTasks("perplexity")).Message);
        Assert.Throws<ArgumentException>(() => EvaluationPlan.ParseTasks("mc:"));
        Assert.Throws<ArgumentException>(() => EvaluationPlan.ParseTasks(" , "));
    }

    [Fact]
    public void A_student_whose_tokenizer_differs_from_the_teachers_is_refused_before_anything_runs()
    {
        using var temp = new TempDir();
        var data = temp["data.txt"];
        File.WriteAllLines(data, ["Once upon a time.", "", "The zebra ran home.", "The end."]);
        EvaluatedModel Student(ITokenizer tokenizer) => Teacher with { Tokenizer = tokenizer, Info = Teacher.Info with { Path = "student/" } };
        var plan = SmallPlan(data);

        var vocabulary = Assert.Throws<InvalidInputException>(() => Evaluator.Run(Student(new AlteredTokenizer(stories.Tokenizer, vocabSize: 600)), Teacher, plan, cancellationToken: TestContext.Current.CancellationToken));
        Assert.StartsWith("student/: tokenizer", vocabulary.Message);
        Assert.Contains("vocabulary of 600 tokens vs 512", vocabulary.Message);

        var encoding = Assert.Throws<InvalidInputException>(() => Evaluator.Run(Student(new AlteredTokenizer(stories.Tokenizer, divergesOn: "zebra")), Teacher, plan, cancellationToken: TestContext.Current.CancellationToken));
        Assert.Contains($"line 3 of {data} encodes differently", encoding.Message);

        var probe = Assert.Throws<InvalidInputException>(() => Evaluator.Run(Student(new AlteredTokenizer(stories.Tokenizer, divergesOn: "Lily")), Teacher, plan, cancellationToken: TestContext.Current.CancellationToken));
        Assert.Contains("the probe text encodes differently", probe.Message);

        // the same tokenizer passes
        TokenizerCompatibility.Check(stories.Tokenizer, "student/", stories.Tokenizer, stories.Folder, data);
    }

    [Fact]
    public void An_empty_data_file_or_a_malformed_task_file_fails_before_any_model_runs()
    {
        using var temp = new TempDir();
        var empty = temp["empty.txt"];
        File.WriteAllText(empty, "");
        var error = Assert.Throws<InvalidInputException>(() => Evaluator.Run(Teacher, Teacher, SmallPlan(empty), cancellationToken: TestContext.Current.CancellationToken));
        Assert.Equal($"{empty}: data file is empty", error.Message);

        var mc = temp["mc.jsonl"];
        File.WriteAllLines(mc, ["""{"query": "q", "choices": ["a", "b"], "gold": 0}""", """{"query": "q", "choices": ["a", "b"], "gold": 5}"""]);
        var steps = new List<EvaluationProgress>();
        var bad = Assert.Throws<InvalidInputException>(() => Evaluator.Run(Teacher, Teacher, SmallPlan(Shared.TinyStoriesValid, mc), new SyncProgress(steps.Add), cancellationToken: TestContext.Current.CancellationToken));
        Assert.Equal($"{mc}: line 2: gold index 5 is out of range for 2 choices", bad.Message);
        Assert.Empty(steps);
    }

    sealed class SyncProgress(Action<EvaluationProgress> report) : IProgress<EvaluationProgress>
    {
        public void Report(EvaluationProgress value) => report(value);
    }
}
