using static TorchSharp.torch;

namespace CombaDistill.Modeling;

/// <summary>Mean negative log-likelihood (nats per predicted token) over <see cref="Tokens"/> predicted tokens, and its exponential.</summary>
public sealed record PerplexityResult(long Tokens, double Nll)
{
    public double Perplexity => Math.Exp(Nll);
}

/// <summary>
/// The one perplexity: a causal LM's next-token log-likelihood over a token stream cut into <see cref="Windowing"/>
/// windows, summed in float64. eval scores its text with it (and its teacher and their agreement on the same
/// windows); distillation's held-out perplexity is <see cref="CrossEntropy"/>, the same scoring over whole chained windows.
/// </summary>
public static class Perplexity
{
    /// <summary>The NLL of <paramref name="tokens"/> under <paramref name="model"/> over <paramref name="windows"/> (from <see cref="Windowing.Over"/>).</summary>
    public static PerplexityResult Evaluate(ICausalLM model, IReadOnlyList<int> tokens, IEnumerable<TokenWindow> windows,
        CancellationToken cancellationToken = default)
    {
        double nll = 0;
        long scored = 0;
        using var noGrad = no_grad();
        foreach (var window in windows)
        {
            cancellationToken.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            var (ids, targets) = Read(tokens, window);
            nll += Nll(ScoredLogProbs(model, ids, window), targets);
            scored += targets.Length;
        }
        if (scored == 0) throw new ArgumentException($"the stream of {tokens.Count} tokens holds no token to score");
        return new PerplexityResult(scored, nll / scored);
    }

    /// <summary>
    /// Mean next-token cross-entropy (nats) over the stream cut into windows of <paramref name="length"/> + 1 tokens that
    /// overlap by one token, so every token after the first is predicted once (a shorter tail is left out), and how many
    /// tokens were scored. exp of it is the perplexity.
    /// </summary>
    public static (double CrossEntropy, long Tokens) CrossEntropy(ICausalLM model, int[] stream, int length, CancellationToken cancellationToken = default)
    {
        var windows = Windowing.Chained(length);
        var whole = windows.Over(stream.Length).Where(w => w.Length == windows.Length).ToList();
        if (whole.Count == 0) throw new ArgumentException($"the stream of {stream.Length} tokens holds no window of {length + 1}");
        var result = Evaluate(model, stream, whole, cancellationToken);
        return (result.Nll, result.Tokens);
    }

    /// <summary>A window's token ids and the targets it scores (the ids from <see cref="TokenWindow.FirstScored"/> on).</summary>
    public static (long[] Ids, long[] Targets) Read(IReadOnlyList<int> tokens, TokenWindow window)
    {
        var ids = new long[window.Length];
        for (var i = 0; i < ids.Length; i++) ids[i] = tokens[window.Start + i];
        return (ids, ids[window.FirstScored..]);
    }

    /// <summary>Log-probabilities (n, V) at the positions that predict the window's scored tokens (the logits at i predict token i + 1).</summary>
    public static Tensor ScoredLogProbs(ICausalLM model, long[] ids, TokenWindow window)
    {
        var input = tensor(ids, [1, ids.Length], device: model.Device);
        var logits = model.Forward(input)[0];
        return logits.narrow(0, window.FirstScored - 1, window.Length - window.FirstScored).log_softmax(-1);
    }

    /// <summary>−Σ log p(target), in float64.</summary>
    public static double Nll(Tensor logProbs, long[] targets)
    {
        var index = tensor(targets, device: logProbs.device).unsqueeze(1);
        return -logProbs.gather(1, index).sum(ScalarType.Float64).item<double>();
    }
}
