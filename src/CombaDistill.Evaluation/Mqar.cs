using CombaDistill.Modeling;
using CombaDistill.Tokenization;
using static TorchSharp.torch;

namespace CombaDistill.Evaluation;

/// <summary>Which MQAR grids to run: every pair count with every sequence length that can hold it; Samples sequences per cell.</summary>
public sealed record MqarOptions(IReadOnlyList<int> Pairs, IReadOnlyList<int> Lengths, int Samples = 16, int Seed = 1234)
{
    public void Validate()
    {
        if (Pairs.Count == 0 || Pairs.Any(p => p < 1)) throw new ArgumentException("MQAR pair counts must be ≥ 1");
        if (Lengths.Count == 0 || Lengths.Any(l => l < 5)) throw new ArgumentException("MQAR lengths must be ≥ 5");
        if (Samples < 1) throw new ArgumentException($"MQAR samples must be ≥ 1, got {Samples}");
    }
}

/// <summary>Accuracy over Queries = samples × pairs recalled values, for one pair count at one sequence length.</summary>
public sealed record MqarCell(int Pairs, int Length, int Queries, double Accuracy);

/// <summary>One MQAR sequence: Ids, and at each query position the value expected next.</summary>
public sealed record MqarSequence(long[] Ids, int[] QueryPositions, int[] Answers);

/// <summary>
/// Multi-query associative recall. A sequence is BOS, N key–value pairs (k₁ v₁ … k_N v_N), filler
/// tokens up to the target length, then every key once more in shuffled order, each followed by its
/// value: k_σ(1) v_σ(1) …. At each queried key the model's argmax must be that key's value, so the
/// values have to survive the filler — exactly what a fixed-size state finds hard and a KV cache
/// does not. Keys, values and filler are disjoint draws from a pool of word-like tokens; queries
/// are teacher-forced, so one forward scores them all.
/// </summary>
public static class Mqar
{
    /// <summary>Tokens whose text is a word fragment (letters only), so sequences look like text to a pretrained model.</summary>
    public static int[] WordTokens(ITokenizer tokenizer) =>
        Enumerable.Range(0, tokenizer.VocabSize)
            .Where(id => id != tokenizer.BosId && id != tokenizer.EosId && tokenizer.Decode([id]).Trim() is { Length: > 0 } text && text.All(char.IsLetter))
            .ToArray();

    public static int MinimumLength(int pairs) => 1 + 4 * pairs;

    public static MqarSequence Sample(int pairs, int length, IReadOnlyList<int> pool, int bos, Random random)
    {
        if (length < MinimumLength(pairs)) throw new ArgumentException($"{pairs} pairs need a sequence of at least {MinimumLength(pairs)} tokens, got {length}");
        if (pool.Count < 2 * pairs + 1) throw new ArgumentException($"{pairs} pairs need at least {2 * pairs + 1} distinct tokens, the pool has {pool.Count}");
        var drawn = pool.ToArray();
        random.Shuffle(drawn);
        var keys = drawn[..pairs];
        var values = drawn[pairs..(2 * pairs)];
        var filler = drawn[(2 * pairs)..];

        var ids = new List<long>(length) { bos };
        for (var i = 0; i < pairs; i++) ids.AddRange([keys[i], values[i]]);
        var fillerCount = length - MinimumLength(pairs);
        for (var i = 0; i < fillerCount; i++) ids.Add(filler[random.Next(filler.Length)]);
        var order = Enumerable.Range(0, pairs).ToArray();
        random.Shuffle(order);
        var positions = new int[pairs];
        var answers = new int[pairs];
        for (var q = 0; q < pairs; q++)
        {
            positions[q] = ids.Count;
            answers[q] = values[order[q]];
            ids.AddRange([keys[order[q]], values[order[q]]]);
        }
        return new MqarSequence(ids.ToArray(), positions, answers);
    }

    /// <summary>
    /// Every (pairs, length) cell that fits, in order of pairs then length. The same seed gives the
    /// same sequences for every model, so a student and its teacher answer the same questions.
    /// </summary>
    public static IReadOnlyList<MqarCell> Evaluate(ICausalLM model, IReadOnlyList<int> pool, MqarOptions options,
        IProgress<(int Done, int Total)>? progress = null, CancellationToken cancellationToken = default)
    {
        options.Validate();
        var cells = (from p in options.Pairs.Distinct().Order() from l in options.Lengths.Distinct().Order() where l >= MinimumLength(p) select (p, l)).ToList();
        var results = new List<MqarCell>();
        using var noGrad = no_grad();
        foreach (var (pairs, length) in cells)
        {
            var random = new Random(Seeds.Mix(options.Seed, pairs, length));
            var sequences = Enumerable.Range(0, options.Samples).Select(_ => Sample(pairs, length, pool, model.Config.BosTokenId, random)).ToList();
            var correct = 0;
            // Batches small enough that the (B, T, V) logits stay around 256 MB.
            var batch = (int)Math.Clamp((1L << 26) / ((long)length * model.Config.VocabSize), 1, options.Samples);
            foreach (var chunk in sequences.Chunk(batch))
            {
                cancellationToken.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                var ids = tensor(chunk.SelectMany(s => s.Ids).ToArray(), [chunk.Length, length], device: model.Device);
                var predicted = model.Forward(ids).argmax(-1).cpu().data<long>().ToArray();
                foreach (var (sequence, b) in chunk.Select((s, b) => (s, b)))
                    for (var q = 0; q < pairs; q++)
                        if (predicted[b * length + sequence.QueryPositions[q]] == sequence.Answers[q]) correct++;
            }
            results.Add(new MqarCell(pairs, length, options.Samples * pairs, (double)correct / (options.Samples * pairs)));
            progress?.Report((results.Count, cells.Count));
        }
        return results;
    }
}
