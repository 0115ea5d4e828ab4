using CombaDistill.Distillation;
using CombaDistill.Evaluation;
using CombaDistill.Modeling;
using CombaDistill.Tests.Support;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Modeling;

/// <summary>The one perplexity against a second computation: the training windows batched through cross_entropy.</summary>
public class PerplexityTests(ImportedStories260K stories) : IClassFixture<ImportedStories260K>
{
    [Theory]
    [InlineData(64, 1000)]
    [InlineData(100, 777)]
    public void Cross_entropy_over_chained_windows_equals_batched_cross_entropy_over_the_training_windows(int length, int count)
    {
        var stream = EvaluationText.LoadTokens(Shared.TinyStoriesValid, stories.Tokenizer, count);
        var (ce, tokens) = Perplexity.CrossEntropy(stories.Model, stream, length, TestContext.Current.CancellationToken);

        var windows = new PackedSequences(stream, length);
        using var noGrad = no_grad();
        using var batch = windows.Batch(Enumerable.Range(0, windows.Count).ToArray());
        using var logits = stories.Model.Forward(batch.narrow(1, 0, length));
        using var targets = batch.narrow(1, 1, length);
        using var sum = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[^1]).to(ScalarType.Float64), targets.reshape(-1), reduction: nn.Reduction.Sum);
        Assert.Equal(windows.Tokens, tokens);
        Assert.Equal(sum.item<double>() / windows.Tokens, ce, 1e-6);
        Assert.Equal((count - 1) / length * length, tokens);   // the shorter tail is left out
    }
}
