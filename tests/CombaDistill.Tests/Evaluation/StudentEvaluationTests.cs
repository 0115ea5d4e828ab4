using CombaDistill.Conversion;
using CombaDistill.Evaluation;
using CombaDistill.Modeling;
using CombaDistill.Modeling.Comba;
using CombaDistill.Tests.Modeling;
using CombaDistill.Tests.Support;
using CombaDistill.Tokenization;

namespace CombaDistill.Tests.Evaluation;

/// <summary>A Comba student converted from stories260K (untrained), evaluated beside its teacher.</summary>
public class StudentEvaluationTests(ImportedStories260K stories) : IClassFixture<ImportedStories260K>
{
    [Fact]
    public void A_converted_student_is_reported_beside_its_teacher_with_a_flat_decoding_state()
    {
        using var temp = new TempDir();
        var folder = temp["student"];
        CombaConverter.Convert(stories.Folder, folder, new ConversionOptions(), cancellationToken: TestContext.Current.CancellationToken);
        var lm = CausalLMLoader.Load(folder);
        using var disposeStudent = (IDisposable)lm;
        Assert.IsType<CombaForCausalLM>(lm);
        var tokenizer = TokenizerLoader.Load(folder);
        var student = new EvaluatedModel(lm, tokenizer, new ModelInfo(folder, "comba", EvaluatedModel.ParameterCount(lm), tokenizer.Description));
        var teacher = new EvaluatedModel(stories.Model, stories.Tokenizer, new ModelInfo(stories.Folder, "llama", 260_032, stories.Tokenizer.Description));
        var plan = new EvaluationPlan
        {
            Tasks = EvaluationPlan.ParseTasks("ppl,agreement,speed").Tasks,
            DataPath = Shared.TinyStoriesValid,
            MaxTokens = 512,
            // short: decoding is slow on a shared CPU; the teacher's growth over 256 → 512 tokens is GenerationSpeedTests'
            Speed = new SpeedOptions([4, 40], Warmup: 1),
        };
        var report = Evaluator.Run(student, teacher, plan, cancellationToken: TestContext.Current.CancellationToken);

        Assert.Equal(1.3112, report.Perplexity!.Teacher!.Nll, 0.001);
        // untrained, the student is worse than its teacher, and disagrees with it
        Assert.True(report.Perplexity.Model.Nll > report.Perplexity.Teacher.Nll + 0.5, $"student NLL {report.Perplexity.Model.Nll}");
        Assert.True(report.Perplexity.PerplexityRatio > 1);
        Assert.True(report.Agreement!.MeanKl > 0.1);
        Assert.InRange(report.Agreement.Top1Agreement, 0.01, 0.99);

        var studentState = report.Speed!.Model.Select(p => p.StateBytes).ToArray();
        var teacherState = report.Speed.Teacher!.Select(p => p.StateBytes).ToArray();
        Assert.Equal(studentState[0], studentState[1]);
        Assert.True(studentState[0] > 0);
        // the cache's first 256 slots: K and V of 5 layers × 4 KV heads × 8 dims in float32
        Assert.Equal([256L * 5 * 2 * 4 * 8 * 4, 256L * 5 * 2 * 4 * 8 * 4], teacherState);
        var memoryRow = report.Rows().Single(r => r.Metric == "decoding state MiB at 40");
        Assert.Equal(studentState[1] / (double)teacherState[1], memoryRow.Ratio!.Value, 1e-12);
    }
}
