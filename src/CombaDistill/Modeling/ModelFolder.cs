using System.Buffers.Binary;
using CombaDistill.IO;
using CombaDistill.Tokenization;

namespace CombaDistill.Modeling;

/// <summary>
/// The check made before a model folder is read. When the path is not a model folder, the one-line error says what it
/// is instead and, where that is clear, what to run: a llama2.c checkpoint (a .bin file, or a folder of them like
/// stories260K) becomes a model folder with <c>combadistill import</c>, and a distill run folder keeps its final
/// student in <c>student/</c>. New users meet these paths first, and "config.json not found" does not tell them either.
/// </summary>
public static class ModelFolder
{
    public const string ConfigFile = "config.json";

    /// <summary>Throws unless <paramref name="folder"/> is an existing folder; a file is named as a file, with a hint if it is a llama2.c checkpoint.</summary>
    public static void RequireFolder(string folder)
    {
        if (Directory.Exists(folder)) return;
        if (File.Exists(folder))
            // the import command is the tool's own text (guidance): the CLI never cuts it, however long the paths
            throw Llama2cHint(folder) is { } hint
                ? new InvalidInputException(folder, "is a file; expected a model folder", guidance: $". Import this llama2.c checkpoint: {hint}")
                : new InvalidInputException(folder, "is a file; expected a model folder (config.json and weights)");
        throw new InvalidInputException(folder, "model folder does not exist");
    }

    /// <summary><see cref="RequireFolder"/>, and a regular config.json in it (a llama2.c folder or a run folder named as what it is).</summary>
    public static void Require(string folder)
    {
        RequireFolder(folder);
        var config = Path.Combine(folder, ConfigFile);
        if (!File.Exists(config) && !Directory.Exists(config))
        {
            var student = Path.Combine(folder, "student");
            if (Directory.Exists(student))
                throw new InvalidInputException(folder, $"no {ConfigFile}; it looks like a distill run folder: pass {student} (its final student) or {Path.Combine(folder, "teacher")} (its teacher)");
            if (Llama2cCheckpointIn(folder) is { } checkpoint)
                throw new InvalidInputException(folder, $"no {ConfigFile}, but a llama2.c checkpoint", guidance: $"; import it: {ImportCommand(checkpoint)}");
        }
        InputFile.RequireRegular(config, ConfigFile);   // its own messages for the rest: missing, a folder, a dangling link
    }

    /// <summary>
    /// "`combadistill import --from … --tokenizer … --out DIR`" when <paramref name="path"/> looks like a llama2.c
    /// checkpoint, else null.
    /// </summary>
    /// <remarks>Kept short: the CLI's error line has room for about 300 characters, and the command holds two paths.</remarks>
    public static string? Llama2cHint(string path) => LooksLikeLlama2cCheckpoint(path) ? ImportCommand(path) : null;

    static string ImportCommand(string checkpoint) =>
        $"`combadistill import --from {checkpoint} --tokenizer {TokenizerBeside(checkpoint) ?? "TOKENIZER.bin"} --out DIR`";

    /// <summary>The first .bin file of <paramref name="folder"/> (by name) that looks like a llama2.c checkpoint.</summary>
    static string? Llama2cCheckpointIn(string folder)
    {
        try
        {
            return Directory.EnumerateFiles(folder, "*.bin").Order(StringComparer.Ordinal).Take(64).FirstOrDefault(LooksLikeLlama2cCheckpoint);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }

    /// <summary>
    /// A llama2.c tokenizer file beside <paramref name="checkpoint"/> (tokenizer.bin and tok*.bin first, as llama2.c names
    /// them); null when none reads as one.
    /// </summary>
    static string? TokenizerBeside(string checkpoint)
    {
        try
        {
            var folder = Path.GetDirectoryName(Path.GetFullPath(checkpoint))!;
            var candidates = Directory.EnumerateFiles(folder, "*.bin")
                .Where(f => Path.GetFullPath(f) != Path.GetFullPath(checkpoint))
                .OrderBy(f => Path.GetFileName(f).StartsWith("tok", StringComparison.OrdinalIgnoreCase) ? 0 : 1).ThenBy(f => f, StringComparer.Ordinal)
                .Take(16);
            // the hint names the path the way the user wrote the checkpoint's (relative stays relative)
            var written = Path.GetDirectoryName(checkpoint) ?? "";
            return candidates.Where(IsLlama2cTokenizer).Select(f => Path.Combine(written, Path.GetFileName(f))).FirstOrDefault();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }

    static bool IsLlama2cTokenizer(string path)
    {
        // tokenizers are small (tok32000.bin is about 0.5 MB); a large .bin is another checkpoint, not worth reading
        if (new FileInfo(path).Length > 64L << 20 || LooksLikeLlama2cCheckpoint(path)) return false;
        try
        {
            Llama2cTokenizer.Load(path);
            return true;
        }
        catch (InvalidInputException) { return false; }
    }

    /// <summary>
    /// True when <paramref name="path"/> is a .bin file whose first 28 bytes read as a llama2.c legacy header (the seven
    /// int32 dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len) and whose length is exactly what that
    /// header implies. Only a recogniser for hints: the importer checks the file in full.
    /// </summary>
    public static bool LooksLikeLlama2cCheckpoint(string path)
    {
        if (!path.EndsWith(".bin", StringComparison.OrdinalIgnoreCase)) return false;
        try
        {
            var length = new FileInfo(path).Length;
            if (length < 28) return false;
            Span<byte> raw = stackalloc byte[28];
            using (var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read)) stream.ReadExactly(raw);
            var f = new long[7];
            for (var i = 0; i < 7; i++) f[i] = BinaryPrimitives.ReadInt32LittleEndian(raw[(4 * i)..]);
            var (dim, hidden, layers, heads, kvHeads, seq) = (f[0], f[1], f[2], f[3], f[4], f[6]);
            var (vocab, shared) = (Math.Abs(f[5]), f[5] > 0);   // a negative vocab_size marks a separate classifier
            if (dim <= 0 || hidden <= 0 || layers <= 0 || heads <= 0 || kvHeads <= 0 || seq <= 0 || vocab == 0) return false;
            if (dim % heads != 0 || heads % kvHeads != 0 || dim / heads % 2 != 0) return false;
            var kv = kvHeads * (dim / heads);
            // the file's floats in order: embeddings; per layer two norms, q, k, v, o and the three MLP matrices; the final
            // norm; the two rotary tables; the classifier unless it is shared
            var floats = checked(vocab * dim + layers * (2 * dim + 2 * dim * dim + 2 * kv * dim + 3 * hidden * dim) + dim
                + seq * (dim / heads) + (shared ? 0 : vocab * dim));
            return checked(28 + 4 * floats) == length;
        }
        catch (OverflowException) { return false; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return false; }
    }
}
