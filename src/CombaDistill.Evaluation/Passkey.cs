using System.Globalization;
using System.Text;
using CombaDistill.Modeling;
using CombaDistill.Tokenization;
using static TorchSharp.torch;

namespace CombaDistill.Evaluation;

/// <summary>Passkey grid: each target context length (tokens) at each depth (0 = start of the filler, 1 = end), Trials keys per cell.</summary>
public sealed record PasskeyOptions(IReadOnlyList<int> Lengths, IReadOnlyList<double> Depths, int Trials = 4, int Seed = 1234)
{
    public void Validate()
    {
        if (Lengths.Count == 0 || Lengths.Any(l => l < 1)) throw new ArgumentException("passkey lengths must be ≥ 1");
        if (Depths.Count == 0 || Depths.Any(d => !(d >= 0 && d <= 1))) throw new ArgumentException("passkey depths must be in [0, 1]");
        if (Trials < 1) throw new ArgumentException($"passkey trials must be ≥ 1, got {Trials}");
    }
}

/// <summary>Share of Trials whose key was reproduced exactly; MeanTokens is the prompts' actual mean length.</summary>
public sealed record PasskeyCell(int Length, double Depth, int Trials, double MeanTokens, double Accuracy);

/// <summary>A prompt of Ids ending with the answer's tokens, which start at AnswerStart.</summary>
public sealed record PasskeyPrompt(int[] Ids, int AnswerStart);

/// <summary>
/// Passkey retrieval: a five-digit key stated once, at some depth inside repetitive filler, then
/// asked for at the end. The key counts as retrieved when every one of its tokens is the model's
/// argmax given the ones before, which is exactly when greedy decoding would write it out; so one
/// teacher-forced forward decides a trial.
/// </summary>
public static class Passkey
{
    const string Introduction = "A pass key is hidden in the long text below. Find it and remember it.";
    static readonly string[] Filler = [" The grass is green.", " The sky is blue.", " The sun is yellow.", " Here we go.", " There and back again."];
    const string Question = " What is the pass key? The pass key is";

    static string Needle(string key) => $" The pass key is {key}. Remember it. {key} is the pass key.";

    /// <summary>
    /// The prompt closest to <paramref name="targetTokens"/> from below (never shorter than the
    /// introduction, needle and question): filler sentences in a fixed cycle, the needle after
    /// round(depth × sentences) of them. The answer's tokens are those of the whole text past the
    /// prompt's, so the key is tokenized as it reads in running text.
    /// </summary>
    public static PasskeyPrompt Build(ITokenizer tokenizer, int targetTokens, double depth, int key)
    {
        var keyText = key.ToString(CultureInfo.InvariantCulture);
        (int[] Prompt, int[] Whole) Encode(int sentences)
        {
            var before = (int)Math.Round(depth * sentences);
            var text = new StringBuilder(Introduction);
            for (var i = 0; i < sentences; i++)
            {
                if (i == before) text.Append(Needle(keyText));
                text.Append(Filler[i % Filler.Length]);
            }
            if (before == sentences) text.Append(Needle(keyText));
            text.Append(Question);
            var prompt = text.ToString();
            return (tokenizer.Encode(prompt, addBos: true), tokenizer.Encode(prompt + " " + keyText, addBos: true));
        }
        var cycle = string.Concat(Filler);
        var perSentence = Math.Max(1.0, tokenizer.Encode(cycle, addBos: false).Length / (double)Filler.Length);
        var count = Math.Max(0, (int)((targetTokens - Encode(0).Whole.Length) / perSentence));
        var (prompt, whole) = Encode(count);
        // Joining texts can merge or split a token at the seams; step to the longest that fits.
        while (whole.Length > targetTokens && count > 0) (prompt, whole) = Encode(--count);
        while (Encode(count + 1) is var longer && longer.Whole.Length <= targetTokens) (prompt, whole, count) = (longer.Prompt, longer.Whole, count + 1);
        var answerStart = Math.Min(CommonPrefix(prompt, whole), whole.Length - 1);
        return new PasskeyPrompt(whole, answerStart);
    }

    static int CommonPrefix(int[] a, int[] b)
    {
        var n = 0;
        while (n < a.Length && n < b.Length && a[n] == b[n]) n++;
        return n;
    }

    /// <summary>Whether every answer token is the argmax at the position before it.</summary>
    public static bool Retrieved(ICausalLM model, PasskeyPrompt prompt)
    {
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var ids = tensor(prompt.Ids.Select(i => (long)i).ToArray(), [1, prompt.Ids.Length], device: model.Device);
        var answerLength = prompt.Ids.Length - prompt.AnswerStart;
        var predicted = model.Forward(ids)[0].narrow(0, prompt.AnswerStart - 1, answerLength).argmax(-1).cpu().data<long>().ToArray();
        return predicted.Select((p, i) => p == prompt.Ids[prompt.AnswerStart + i]).All(ok => ok);
    }

    /// <summary>Every (length, depth) cell; the same seed gives the same keys for every model.</summary>
    public static IReadOnlyList<PasskeyCell> Evaluate(ICausalLM model, ITokenizer tokenizer, PasskeyOptions options,
        IProgress<(int Done, int Total)>? progress = null, CancellationToken cancellationToken = default)
    {
        options.Validate();
        var cells = (from l in options.Lengths.Distinct().Order() from d in options.Depths.Distinct().Order() select (l, d)).ToList();
        var results = new List<PasskeyCell>();
        using var noGrad = no_grad();
        foreach (var (length, depth) in cells)
        {
            var random = new Random(Seeds.Mix(options.Seed, length, (int)Math.Round(depth * 1_000_000)));
            int retrieved = 0;
            long tokens = 0;
            for (var trial = 0; trial < options.Trials; trial++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var prompt = Build(tokenizer, length, depth, random.Next(10_000, 100_000));
                tokens += prompt.Ids.Length;
                if (Retrieved(model, prompt)) retrieved++;
            }
            results.Add(new PasskeyCell(length, depth, options.Trials, (double)tokens / options.Trials, (double)retrieved / options.Trials));
            progress?.Report((results.Count, cells.Count));
        }
        return results;
    }
}
