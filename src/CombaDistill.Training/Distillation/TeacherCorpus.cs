using CombaDistill.IO;
using CombaDistill.Modeling;
using static TorchSharp.torch;

namespace CombaDistill.Distillation;

/// <summary>How to sample a teacher corpus.</summary>
public sealed record CorpusOptions
{
    /// <summary>Tokens to write (BOS included); the last batch is cut to fit.</summary>
    public required long Tokens { get; init; }
    /// <summary>Sequences sampled side by side.</summary>
    public int Batch { get; init; } = 32;
    /// <summary>Tokens sampled after each BOS.</summary>
    public int Length { get; init; } = 256;
    public double Temperature { get; init; } = 1.0;
    public double TopP { get; init; } = 1.0;
    public long Seed { get; init; } = 1234;
    /// <summary>Replace an existing output, when it is a token file (one this tool wrote).</summary>
    public bool Force { get; init; }

    public void Validate()
    {
        if (Tokens <= 0) throw new ArgumentException($"--tokens is {Tokens}; expected a positive number");
        // the corpus is gathered in memory before its one write
        if (Tokens > int.MaxValue) throw new ArgumentException($"--tokens is {Tokens:N0}; one corpus holds at most {int.MaxValue:N0} tokens (write several with different seeds)");
        if (Batch <= 0) throw new ArgumentException($"--batch is {Batch}; expected a positive number");
        if (Length <= 0) throw new ArgumentException($"--length is {Length}; expected a positive number");
        new GenerationOptions(Length, Temperature, TopP).Validate();
    }
}

/// <summary>
/// Data-free distillation text: the teacher writes it. Sequences of BOS followed by <see cref="CorpusOptions.Length"/>
/// sampled tokens are decoded a batch at a time through the teacher's decoding state and appended to a token file
/// (docs/recipes.md), ready to be a recipe's <c>train</c> data. Whatever the model emits is kept — a story that ends
/// and another that begins after BOS, as in the teacher's own training stream. Sampling is on the host with one
/// seeded generator per run, so a seed always writes the same file.
/// </summary>
public static class TeacherCorpus
{
    /// <returns>tokens written</returns>
    public static long Write(ICausalLM teacher, string outPath, CorpusOptions options, IProgress<long>? progress = null, CancellationToken cancellationToken = default)
    {
        options.Validate();
        CheckOutput(outPath, options.Force);
        var context = teacher.Config.MaxPositionEmbeddings;
        if (options.Length + 1 > context)
            throw new ArgumentException($"--length {options.Length} plus BOS exceeds the teacher's context of {context} tokens");
        var random = new Random(unchecked((int)options.Seed ^ (int)(options.Seed >> 32)));
        var bos = teacher.Config.BosTokenId;
        var stream = new List<int>((int)Math.Min(options.Tokens, int.MaxValue));
        using var noGrad = no_grad();
        while (stream.Count < options.Tokens)
        {
            var rows = (int)Math.Min(options.Batch, (options.Tokens - stream.Count + options.Length) / (options.Length + 1));
            rows = Math.Max(rows, 1);
            var sequences = Enumerable.Range(0, rows).Select(_ => new List<int>(options.Length + 1) { bos }).ToArray();
            using var state = teacher.NewState(rows);
            var input = Enumerable.Repeat((long)bos, rows).ToArray();
            for (var t = 0; t < options.Length; t++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                float[] logits;
                using (NewDisposeScope())
                {
                    using var ids = tensor(input, [rows, 1], device: teacher.Device);
                    logits = teacher.Forward(ids, state).reshape(rows, -1).cpu().data<float>().ToArray();
                }
                var vocab = logits.Length / rows;
                for (var r = 0; r < rows; r++)
                {
                    var next = Generation.PickToken(logits[(r * vocab)..((r + 1) * vocab)], options.Temperature, options.TopP, random);
                    sequences[r].Add(next);
                    input[r] = next;
                }
            }
            foreach (var sequence in sequences) stream.AddRange(sequence);
            progress?.Report(Math.Min(stream.Count, options.Tokens));
        }
        if (stream.Count > options.Tokens) stream.RemoveRange((int)options.Tokens, stream.Count - (int)options.Tokens);
        CheckOutput(outPath, options.Force);   // again: something may have appeared there while the teacher sampled
        TokenFile.Write(outPath, stream.ToArray(), teacher.Config.VocabSize);
        return stream.Count;
    }

    /// <summary>
    /// Throws unless <paramref name="outPath"/> may be written: its folder exists, and whatever is already there is a
    /// token file and <paramref name="force"/> was given. Anything else (a folder, a text file, a model) is never replaced.
    /// </summary>
    public static void CheckOutput(string outPath, bool force)
    {
        var directory = Path.GetDirectoryName(Path.GetFullPath(outPath))!;
        if (!Directory.Exists(directory)) throw new InvalidInputException(outPath, $"folder {directory} does not exist");
        if (Directory.Exists(outPath)) throw new InvalidInputException(outPath, "is a folder; --out must be a token file");
        if (!File.Exists(outPath)) return;
        const string Rule = "--force replaces only a token file this tool wrote";
        if (!TokenFile.HasMagic(outPath))
            throw new InvalidInputException(outPath, force
                ? $"is not a token file (no '{TokenFile.Magic}' header); {Rule}"
                : $"exists and is not a token file (no '{TokenFile.Magic}' header); choose another --out ({Rule})");
        if (!force) throw new InvalidInputException(outPath, "exists; use --force to replace it");
    }
}
