using CombaDistill.Evaluation;
using CombaDistill.IO;
using CombaDistill.Modeling;
using CombaDistill.Modeling.Llama;
using CombaDistill.Tests.Modeling;
using CombaDistill.Tests.Support;
using CsCheck;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Evaluation;

/// <summary>Perplexity and agreement on the stories260K teacher, against its reference loss and independent computations.</summary>
public class TextMetricsTests(ImportedStories260K stories) : IClassFixture<ImportedStories260K>
{
    int[] ValidationTokens(int count) => EvaluationText.LoadTokens(Shared.TinyStoriesValid, stories.Tokenizer, count);

    [Fact]
    public void Teacher_NLL_on_the_first_512_validation_tokens_is_the_reference_1_3112()
    {
        var tokens = ValidationTokens(512);
        Assert.Equal(512, tokens.Length);
        Assert.Equal(stories.Tokenizer.BosId, tokens[0]);
        var result = TextMetrics.Evaluate(stories.Model, null, tokens, new Windowing(512), cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(511, result.Model.Tokens);
        Assert.Equal(1.3112, result.Model.Nll, 0.001);
        Assert.Equal(Math.Exp(result.Model.Nll), result.Model.Perplexity, 1e-12);
        Assert.Null(result.Teacher);
        Assert.Null(result.Agreement);
    }

    [Fact]
    public void Sliding_windows_with_stride_1_score_each_token_on_exactly_the_window_before_it()
    {
        var tokens = ValidationTokens(40);
        const int window = 8;
        var result = TextMetrics.Evaluate(stories.Model, null, tokens, new Windowing(window, 1), cancellationToken: TestContext.Current.CancellationToken);

        // By definition: token j is predicted from tokens [max(0, j − window + 1), j).
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var total = 0.0;
        for (var j = 1; j < tokens.Length; j++)
        {
            var start = Math.Max(0, j - window + 1);
            var context = tokens[start..j].Select(i => (long)i).ToArray();
            var logits = stories.Model.forward(tensor(context, [1, context.Length]))[0, -1].to(ScalarType.Float64);
            total -= logits.log_softmax(-1)[tokens[j]].item<double>();
        }
        Assert.Equal(39, result.Model.Tokens);
        Assert.Equal(total / 39, result.Model.Nll, 1e-5);
        // with less context the loss is worse than reading the 40 tokens in one window
        Assert.True(result.Model.Nll > TextMetrics.Evaluate(stories.Model, null, tokens, new Windowing(40), cancellationToken: TestContext.Current.CancellationToken).Model.Nll);
    }

    [Fact]
    public void Teacher_against_itself_agrees_exactly_with_zero_KL()
    {
        var tokens = ValidationTokens(300);
        var result = TextMetrics.Evaluate(stories.Model, stories.Model, tokens, new Windowing(128, 64), cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(1.0, result.Agreement!.Top1Agreement);
        Assert.Equal(0.0, result.Agreement.MeanKl);
        Assert.Equal(299, result.Agreement.Tokens);
        Assert.Equal(result.Model, result.Teacher);
    }

    [Fact]
    public void A_perturbed_model_has_positive_KL_equal_to_a_direct_computation()
    {
        using var perturbed = LlamaForCausalLM.FromPretrained(stories.Folder, device: CPU);
        using (no_grad())
        {
            var generator = new Generator(7);
            foreach (var p in perturbed.parameters()) p.add_(0.05 * randn(p.shape, generator: generator));
        }
        var tokens = ValidationTokens(64);
        var result = TextMetrics.Evaluate(perturbed, stories.Model, tokens, new Windowing(64), cancellationToken: TestContext.Current.CancellationToken);

        // KL(teacher ‖ student) and argmax agreement, position by position on the host in float64.
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var ids = tensor(tokens.Select(i => (long)i).ToArray(), [1, 64]);
        var teacher = stories.Model.forward(ids)[0].to(ScalarType.Float64).data<double>().ToArray();
        var student = perturbed.forward(ids)[0].to(ScalarType.Float64).data<double>().ToArray();
        var vocab = stories.Model.Config.VocabSize;
        double kl = 0;
        var agreed = 0;
        for (var t = 0; t < 63; t++)
        {
            var pt = LogSoftmax(teacher.AsSpan(t * vocab, vocab));
            var ps = LogSoftmax(student.AsSpan(t * vocab, vocab));
            for (var v = 0; v < vocab; v++) kl += Math.Exp(pt[v]) * (pt[v] - ps[v]);
            if (Array.IndexOf(pt, pt.Max()) == Array.IndexOf(ps, ps.Max())) agreed++;
        }
        Assert.True(result.Agreement!.MeanKl > 1e-3, $"KL {result.Agreement.MeanKl}");
        Assert.Equal(kl / 63, result.Agreement.MeanKl, 1e-5);
        Assert.Equal(agreed / 63.0, result.Agreement.Top1Agreement, 1e-12);
        Assert.True(result.Agreement.Top1Agreement < 1);
        Assert.NotEqual(result.Model.Nll, result.Teacher!.Nll);
    }

    static double[] LogSoftmax(ReadOnlySpan<double> logits)
    {
        var max = double.NegativeInfinity;
        foreach (var l in logits) max = Math.Max(max, l);
        var sum = 0.0;
        foreach (var l in logits) sum += Math.Exp(l - max);
        var result = new double[logits.Length];
        for (var i = 0; i < logits.Length; i++) result[i] = logits[i] - max - Math.Log(sum);
        return result;
    }

    [Fact]
    public void JSONL_data_is_read_document_by_document_each_with_BOS()
    {
        using var temp = new TempDir();
        var path = temp["data.jsonl"];
        File.WriteAllLines(path, ["{\"text\": \"Once upon a time\"}", "", "{\"text\": \"The cat sat.\", \"id\": 2}"]);
        var tokens = EvaluationText.LoadTokens(path, stories.Tokenizer, 1000);
        Assert.Equal([.. stories.Tokenizer.Encode("Once upon a time", addBos: true), .. stories.Tokenizer.Encode("The cat sat.", addBos: true)], tokens);
        Assert.Equal(tokens[..5], EvaluationText.LoadTokens(path, stories.Tokenizer, 5));
    }

    [Theory]
    [InlineData("", "data file is empty")]
    [InlineData("  \n\n ", "only whitespace")]
    public void Empty_text_files_are_refused_naming_the_file(string content, string problem)
    {
        using var temp = new TempDir();
        var path = temp["empty.txt"];
        File.WriteAllText(path, content);
        var error = Assert.Throws<InvalidInputException>(() => EvaluationText.LoadTokens(path, stories.Tokenizer, 100));
        Assert.Contains(path, error.Message);
        Assert.Contains(problem, error.Message);
    }

    [Theory]
    [InlineData("{\"text\": \"fine\"}\n{\"text\": \"fine\"\n", "line 2: not valid JSON")]
    [InlineData("{\"text\": \"fine\"}\n\n{\"body\": \"x\"}\n", "line 3: field \"text\" is missing")]
    [InlineData("[1, 2]\n", "line 1: expected a JSON object")]
    [InlineData("{\"text\": \"\"}\n", "no non-empty \"text\" documents")]
    public void Malformed_JSONL_data_names_the_file_and_line(string content, string problem)
    {
        using var temp = new TempDir();
        var path = temp["data.jsonl"];
        File.WriteAllText(path, content);
        var error = Assert.Throws<InvalidInputException>(() => EvaluationText.LoadTokens(path, stories.Tokenizer, 100));
        Assert.StartsWith(path + ":", error.Message);
        Assert.Contains(problem, error.Message);
    }
}
