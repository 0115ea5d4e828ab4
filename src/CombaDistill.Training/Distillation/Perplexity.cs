using CombaDistill.Modeling;
using static TorchSharp.torch;

namespace CombaDistill.Distillation;

/// <summary>Held-out cross-entropy of any causal LM over a token stream, so teacher and student are scored on identical windows.</summary>
public static class Perplexity
{
    /// <summary>
    /// Mean next-token cross-entropy (nats) over the stream cut into windows of <paramref name="length"/> + 1 tokens
    /// (<see cref="PackedSequences"/>), and how many tokens were scored. exp of it is the perplexity.
    /// </summary>
    public static (double CrossEntropy, long Tokens) CrossEntropy(ICausalLM model, int[] stream, int length, int batch = 4, CancellationToken cancellationToken = default)
    {
        var windows = new PackedSequences(stream, length);
        if (windows.Count == 0) throw new ArgumentException($"the stream of {stream.Length} tokens holds no window of {length + 1}");
        double sum = 0;
        foreach (var chunk in Enumerable.Range(0, windows.Count).Chunk(batch))
        {
            cancellationToken.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            var ids = windows.Batch(chunk).to(model.Device);
            var logits = model.Forward(ids.narrow(1, 0, length));
            var targets = ids.narrow(1, 1, length);
            sum += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[^1]), targets.reshape(-1), reduction: nn.Reduction.Sum).to(ScalarType.Float64).item<double>();
        }
        return (sum / windows.Tokens, windows.Tokens);
    }
}
