using static TorchSharp.torch;

namespace CombaDistill.Modeling;

/// <summary>
/// How to pick tokens. Temperature 0 is greedy (argmax, lowest id on ties); otherwise logits are
/// divided by the temperature and sampled, restricted to the smallest set of most likely tokens
/// whose probability exceeds <paramref name="TopP"/> (nucleus sampling; 1 keeps all).
/// </summary>
public sealed record GenerationOptions(int MaxTokens, double Temperature, double TopP = 1.0, long? Seed = null, bool StopAtEos = true)
{
    public void Validate()
    {
        if (MaxTokens < 0) throw new ArgumentException($"max tokens must be ≥ 0, got {MaxTokens}");
        if (!(Temperature >= 0) || double.IsInfinity(Temperature)) throw new ArgumentException($"temperature must be a finite number ≥ 0, got {Temperature}");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentException($"top-p must be in (0, 1], got {TopP}");
    }
}

/// <summary>Autoregressive decoding: the prompt is read in one forward, then one token per step through the model's decoding state.</summary>
public static class Generation
{
    /// <summary>
    /// Yields up to MaxTokens new token ids after <paramref name="prompt"/> (which must hold at least
    /// one id, e.g. just BOS). Sampling draws from a <see cref="Random"/> seeded with Seed on the
    /// host, after the logits are copied there, so a seed gives the same tokens on every device
    /// whose logits agree. With StopAtEos an end-of-sequence id ends the output and is not yielded.
    /// </summary>
    public static IEnumerable<int> Generate(ICausalLM model, IReadOnlyList<int> prompt, GenerationOptions options, CancellationToken cancellationToken = default)
    {
        options.Validate();
        if (prompt.Count == 0) throw new ArgumentException("the prompt must hold at least one token (e.g. BOS)");
        if (prompt.Any(id => id < 0 || id >= model.Config.VocabSize))
            throw new ArgumentException($"prompt token ids must be in [0, {model.Config.VocabSize})");
        if (options.MaxTokens == 0) yield break;

        var random = options.Seed is { } seed ? new Random(unchecked((int)seed ^ (int)(seed >> 32))) : new Random();
        var eos = options.StopAtEos ? model.Config.EosTokenIds.ToHashSet() : [];
        using var state = model.NewState(batch: 1);
        var input = prompt.Select(id => (long)id).ToArray();
        for (var produced = 0; produced < options.MaxTokens; produced++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            float[] logits;
            // Gradient mode is thread state: it is switched off only around the step, never across a yield,
            // or the caller's thread would keep it off while this enumerator is suspended.
            using (no_grad())
            using (NewDisposeScope())
            {
                using var ids = tensor(input, [1, input.Length], device: model.Device);
                logits = model.Forward(ids, state)[0, -1].cpu().data<float>().ToArray();
            }
            var next = PickToken(logits, options.Temperature, options.TopP, random);
            if (eos.Contains(next)) yield break;
            yield return next;
            input = [next];
        }
    }

    /// <summary>One token from a row of logits: the argmax at temperature 0, else a temperature/top-p sample drawn with <paramref name="random"/>.</summary>
    public static int PickToken(float[] logits, double temperature, double topP, Random random) =>
        temperature == 0 ? ArgMax(logits) : Sample(logits, temperature, topP, random);

    static int ArgMax(float[] logits)
    {
        var best = 0;
        for (var i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }

    static int Sample(float[] logits, double temperature, double topP, Random random)
    {
        // Softmax in double on the host: exact enough, and identical on every device.
        var max = logits.Max();
        var probabilities = logits.Select(l => Math.Exp((l - max) / temperature)).ToArray();
        var total = probabilities.Sum();
        for (var i = 0; i < probabilities.Length; i++) probabilities[i] /= total;

        var candidates = Enumerable.Range(0, probabilities.Length).ToArray();
        if (topP < 1)
        {
            // Most likely first (lower id first on ties), cut after the token that crosses top-p.
            Array.Sort(candidates, (a, b) => probabilities[b] != probabilities[a] ? probabilities[b].CompareTo(probabilities[a]) : a.CompareTo(b));
            var cumulative = 0.0;
            var keep = 0;
            while (keep < candidates.Length && cumulative <= topP) cumulative += probabilities[candidates[keep++]];
            candidates = candidates[..keep];
        }
        var mass = candidates.Sum(i => probabilities[i]);
        var coin = random.NextDouble() * mass;
        foreach (var i in candidates)
        {
            coin -= probabilities[i];
            if (coin < 0) return i;
        }
        return candidates[^1];
    }
}
