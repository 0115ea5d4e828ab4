using System.Text.Json;
using CombaDistill.IO;
using CombaDistill.Modeling;
using CombaDistill.Tokenization;
using static TorchSharp.torch;

namespace CombaDistill.Evaluation;

/// <summary>One question: a context, the continuations to choose from, and the index of the right one. Line is where it was read (1-based).</summary>
public sealed record MultipleChoiceItem(string Context, IReadOnlyList<string> Choices, int Gold, int Line = 0);

/// <summary>
/// Accuracy picks the choice of highest total log-likelihood; normalised accuracy divides it by
/// the choice's length in characters (Unicode code points, as the common evaluation harness does),
/// which stops long choices from losing just for being long. Chance is the mean of 1/choices.
/// </summary>
public sealed record MultipleChoiceResult(int Items, double Accuracy, double NormalisedAccuracy, double Chance)
{
    /// <summary>(accuracy − chance) of this model over that of <paramref name="teacher"/>; null when the teacher is not above chance.</summary>
    public double? AboveChanceRatio(MultipleChoiceResult teacher) =>
        teacher.Accuracy - teacher.Chance is var margin && margin > 0 ? (Accuracy - Chance) / margin : null;
}

/// <summary>Multiple-choice tasks in the JSONL layout evaluation harnesses use.</summary>
public static class MultipleChoice
{
    public static readonly string[] ContextFields = ["context", "query", "ctx", "question", "prompt"];
    public static readonly string[] ChoicesFields = ["choices", "endings", "options"];
    public static readonly string[] GoldFields = ["gold", "label", "answer", "answerKey"];

    /// <summary>
    /// Reads one item per line. Choices are a list of strings, or an object whose "text" is one
    /// (with "label" naming them, as ARC does). The gold index is a number, a numeral string, a
    /// choice label, or a letter A, B, … counting from 0.
    /// </summary>
    public static IReadOnlyList<MultipleChoiceItem> Load(string path)
    {
        if (!File.Exists(path)) throw new InvalidInputException(path, "multiple-choice file does not exist");
        InputFile.RequireRegular(path, "multiple-choice file");
        var items = new List<MultipleChoiceItem>();
        foreach (var (line, item) in Jsonl.Read(path)) items.Add(Parse(path, line, item));
        if (items.Count == 0) throw new InvalidInputException(path, "holds no multiple-choice items");
        return items;
    }

    static MultipleChoiceItem Parse(string path, int line, JsonElement item)
    {
        InvalidInputException Bad(string problem) => new(path, $"line {line}: {problem}");
        var context = Field(item, ContextFields) is { } c
            ? c.ValueKind == JsonValueKind.String ? c.GetString()! : throw Bad("the context is not a string")
            : throw Bad($"no context field (one of {string.Join(", ", ContextFields)})");

        var choicesElement = Field(item, ChoicesFields) ?? throw Bad($"no choices field (one of {string.Join(", ", ChoicesFields)})");
        string[]? labels = null;
        if (choicesElement.ValueKind == JsonValueKind.Object)
        {
            if (choicesElement.TryGetProperty("label", out var l) && l.ValueKind == JsonValueKind.Array)
                labels = l.EnumerateArray().Select(e => e.ToString()).ToArray();
            choicesElement = choicesElement.TryGetProperty("text", out var t) ? t : throw Bad("choices is an object without a \"text\" list");
        }
        if (choicesElement.ValueKind != JsonValueKind.Array || choicesElement.EnumerateArray().Any(e => e.ValueKind != JsonValueKind.String))
            throw Bad("choices must be a list of strings");
        var choices = choicesElement.EnumerateArray().Select(e => e.GetString()!).ToArray();
        if (choices.Length < 2) throw Bad($"needs at least 2 choices, got {choices.Length}");
        if (choices.Any(string.IsNullOrEmpty)) throw Bad("a choice is empty");

        var goldElement = Field(item, GoldFields) ?? throw Bad($"no gold field (one of {string.Join(", ", GoldFields)})");
        int gold = goldElement.ValueKind switch
        {
            JsonValueKind.Number when goldElement.TryGetInt32(out var n) => n,
            JsonValueKind.String when int.TryParse(goldElement.GetString(), out var n) => n,
            JsonValueKind.String when labels is not null && Array.IndexOf(labels, goldElement.GetString()) is var i and >= 0 => i,
            JsonValueKind.String when goldElement.GetString() is [var letter] && letter is >= 'A' and <= 'Z' => letter - 'A',
            _ => throw Bad($"gold answer {goldElement.GetRawText()} is not an index, a numeral, a choice label or a letter"),
        };
        if (gold < 0 || gold >= choices.Length) throw Bad($"gold index {gold} is out of range for {choices.Length} choices");
        return new MultipleChoiceItem(context, choices, gold, line);
    }

    static JsonElement? Field(JsonElement item, string[] names)
    {
        foreach (var name in names)
            if (item.TryGetProperty(name, out var value)) return value;
        return null;
    }

    /// <summary>
    /// Scores every choice as a continuation of BOS + context. As in the common harness the
    /// continuation's tokens are those of encode(context + choice) past encode(context), so a
    /// choice is tokenized as it reads in running text. All choices of an item go in one batch,
    /// padded on the right (a causal model's earlier logits never see the padding); sequences longer
    /// than the model's context lose tokens from the left.
    /// </summary>
    public static MultipleChoiceResult Evaluate(ICausalLM model, ITokenizer tokenizer, IReadOnlyList<MultipleChoiceItem> items,
        IProgress<(int Done, int Total)>? progress = null, CancellationToken cancellationToken = default)
    {
        if (items.Count == 0) throw new ArgumentException("no multiple-choice items");
        int correct = 0, correctNormalised = 0;
        double chance = 0;
        using var noGrad = no_grad();
        for (var n = 0; n < items.Count; n++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var item = items[n];
            var scores = ChoiceLogLikelihoods(model, tokenizer, item);
            var lengths = item.Choices.Select(c => (double)c.EnumerateRunes().Count()).ToArray();
            if (ArgMax(scores) == item.Gold) correct++;
            if (ArgMax(scores.Select((s, i) => s / lengths[i]).ToArray()) == item.Gold) correctNormalised++;
            chance += 1.0 / item.Choices.Count;
            progress?.Report((n + 1, items.Count));
        }
        return new MultipleChoiceResult(items.Count, (double)correct / items.Count, (double)correctNormalised / items.Count, chance / items.Count);
    }

    /// <summary>Sum of log p(continuation token | everything before it) for each choice.</summary>
    public static double[] ChoiceLogLikelihoods(ICausalLM model, ITokenizer tokenizer, MultipleChoiceItem item)
    {
        var context = tokenizer.Encode(item.Context, addBos: true);
        var sequences = new List<(int[] Ids, int ContinuationStart)>();
        foreach (var choice in item.Choices)
        {
            var whole = tokenizer.Encode(item.Context + choice, addBos: true);
            var start = Math.Min(context.Length, whole.Length - 1);
            // A choice that merges into the context's last token still needs one token of its own to score.
            start = Math.Max(start, 1);
            var cut = Math.Max(0, whole.Length - model.Config.MaxPositionEmbeddings);
            if (cut >= start) throw new ArgumentException($"item of line {item.Line}: choice \"{choice}\" alone is longer than the model's context ({model.Config.MaxPositionEmbeddings} tokens)");
            sequences.Add((whole[cut..], start - cut));
        }
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var width = sequences.Max(s => s.Ids.Length);
        var padded = new long[sequences.Count * width];
        for (var b = 0; b < sequences.Count; b++)
            for (var t = 0; t < sequences[b].Ids.Length; t++) padded[b * width + t] = sequences[b].Ids[t];
        var logProbs = model.Forward(tensor(padded, [sequences.Count, width], device: model.Device)).log_softmax(-1);
        var scores = new double[sequences.Count];
        for (var b = 0; b < sequences.Count; b++)
        {
            var (ids, start) = sequences[b];
            var targets = tensor(ids[start..].Select(i => (long)i).ToArray(), device: logProbs.device).unsqueeze(1);
            scores[b] = logProbs[b].narrow(0, start - 1, ids.Length - start).gather(1, targets).sum(ScalarType.Float64).item<double>();
        }
        return scores;
    }

    static int ArgMax(double[] values)
    {
        var best = 0;
        for (var i = 1; i < values.Length; i++) if (values[i] > values[best]) best = i;
        return best;
    }
}
