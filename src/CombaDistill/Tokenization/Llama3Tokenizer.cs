using System.Text;
using System.Text.RegularExpressions;
using CombaDistill.IO;
using Microsoft.ML.Tokenizers;

namespace CombaDistill.Tokenization;

/// <summary>
/// Llama 3's tiktoken <c>tokenizer.model</c>: text lines "base64(token bytes) rank", byte-level BPE
/// over the Llama 3 pre-tokenizer split, then 256 special tokens numbered from the number of ranks
/// on (&lt;|begin_of_text|&gt; = 128000 for the real vocabulary). Special tokens written in the
/// text are recognised (as Hugging Face does), so chat templates encode as intended.
/// </summary>
public sealed class Llama3Tokenizer : IByteTokenizer
{
    /// <summary>The split pattern Llama 3 uses before BPE (tiktoken's <c>pat_str</c>).</summary>
    public const string PreTokenizerPattern =
        @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    public const int SpecialTokenCount = 256;

    readonly TiktokenTokenizer inner;
    readonly byte[][] decodedBytes;

    public int VocabSize => decodedBytes.Length;
    public int BosId { get; }
    public int EosId { get; }
    public int RankCount { get; }
    public IReadOnlyDictionary<string, int> SpecialTokens { get; }
    public string SourcePath { get; }
    public string Description => $"Llama 3 tiktoken tokenizer, {RankCount} ranks + {SpecialTokens.Count} special tokens ({Path.GetFileName(SourcePath)})";

    Llama3Tokenizer(TiktokenTokenizer inner, byte[][] decodedBytes, int rankCount, IReadOnlyDictionary<string, int> specialTokens, int bosId, int eosId, string sourcePath)
    {
        this.inner = inner;
        this.decodedBytes = decodedBytes;
        RankCount = rankCount;
        SpecialTokens = specialTokens;
        BosId = bosId;
        EosId = eosId;
        SourcePath = sourcePath;
    }

    /// <summary>
    /// Llama 3's special tokens, with ids from <paramref name="rankCount"/> on: begin/end of text,
    /// header markers, end of turn, and reserved tokens filling the rest of the 256.
    /// </summary>
    public static IReadOnlyDictionary<string, int> DefaultSpecialTokens(int rankCount)
    {
        string[] named =
        [
            "<|begin_of_text|>", "<|end_of_text|>",
            "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
            "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
            "<|start_header_id|>", "<|end_header_id|>",
            "<|reserved_special_token_4|>", "<|eot_id|>",
        ];
        var tokens = new Dictionary<string, int>(SpecialTokenCount, StringComparer.Ordinal);
        foreach (string name in named) tokens.Add(name, rankCount + tokens.Count);
        for (int reserved = 5; tokens.Count < SpecialTokenCount; reserved++)
            tokens.Add($"<|reserved_special_token_{reserved}|>", rankCount + tokens.Count);
        return tokens;
    }

    /// <param name="specialTokens">Replaces the default Llama 3 special tokens (e.g. Llama 3.1's names from tokenizer_config.json).</param>
    /// <param name="bosId">Overrides BOS (default &lt;|begin_of_text|&gt;).</param>
    /// <param name="eosId">Overrides EOS (default &lt;|end_of_text|&gt;; instruct models end turns with &lt;|eot_id|&gt;).</param>
    public static Llama3Tokenizer Load(string path, IReadOnlyDictionary<string, int>? specialTokens = null, int? bosId = null, int? eosId = null)
    {
        byte[] file;
        file = InputFile.ReadAllBytes(path, "tiktoken model");

        var tokenBytes = new Dictionary<int, byte[]>();
        string[] lines = Encoding.UTF8.GetString(file).Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            string line = lines[i].TrimEnd('\r');
            if (line.Length == 0) continue;
            string[] fields = line.Split(' ');
            byte[] bytes;
            if (fields.Length != 2 || !int.TryParse(fields[1], out int rank) || rank < 0)
                throw new InvalidInputException(path, $"line {i + 1} is not \"base64-token rank\": \"{Truncate(line)}\"");
            try { bytes = Convert.FromBase64String(fields[0]); }
            catch (FormatException e) { throw new InvalidInputException(path, $"line {i + 1}: token \"{Truncate(fields[0])}\" is not base64", e); }
            if (!tokenBytes.TryAdd(rank, bytes))
                throw new InvalidInputException(path, $"line {i + 1}: rank {rank} appears twice");
        }
        int rankCount = tokenBytes.Count;
        if (rankCount == 0) throw new InvalidInputException(path, "tiktoken model has no ranks");
        if (tokenBytes.Keys.Max() != rankCount - 1)
            throw new InvalidInputException(path, $"tiktoken ranks are not 0..{rankCount - 1} (largest is {tokenBytes.Keys.Max()})");

        // byte-level BPE encodes any text only when every byte is a token of its own; refuse at load, not at the first unknown byte
        var singleBytes = new bool[256];
        foreach (var bytes in tokenBytes.Values) if (bytes.Length == 1) singleBytes[bytes[0]] = true;
        if (Array.IndexOf(singleBytes, false) is var missing and >= 0)
            throw new InvalidInputException(path, $"tiktoken model has no token for the single byte 0x{missing:X2}; byte-level BPE needs all 256, or some text cannot be encoded");

        specialTokens ??= DefaultSpecialTokens(rankCount);
        foreach (var (name, id) in specialTokens)
            if (id < rankCount) throw new InvalidInputException(path, $"special token {name} has id {id}, which is a BPE rank (special ids start at {rankCount})");
        int vocabSize = Math.Max(rankCount, specialTokens.Values.DefaultIfEmpty(-1).Max() + 1);
        var decoded = new byte[vocabSize][];
        for (int id = 0; id < vocabSize; id++) decoded[id] = tokenBytes.GetValueOrDefault(id) ?? [];

        int Special(string name, int? given)
        {
            if (given is { } id) return (uint)id < (uint)vocabSize ? id
                : throw new InvalidInputException(path, $"{name} id {id} is outside the vocabulary of {vocabSize}");
            return specialTokens.TryGetValue(name, out int found) ? found
                : throw new InvalidInputException(path, $"special token {name} is not defined; give its id explicitly");
        }
        int bos = Special("<|begin_of_text|>", bosId);
        int eos = Special("<|end_of_text|>", eosId);

        TiktokenTokenizer inner;
        try
        {
            using var stream = new MemoryStream(file, writable: false);
            var preTokenizer = new RegexPreTokenizer(new Regex(PreTokenizerPattern, RegexOptions.Compiled), specialTokens);
            inner = TiktokenTokenizer.Create(stream, preTokenizer, normalizer: null, specialTokens);
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException)
        {
            throw new InvalidInputException(path, $"tiktoken model cannot be used: {e.Message}", e);
        }
        return new Llama3Tokenizer(inner, decoded, rankCount, specialTokens, bos, eos, path);
    }

    public int[] Encode(string text, bool addBos)
    {
        var ids = inner.EncodeToIds(text);
        return addBos ? [BosId, .. ids] : [.. ids];
    }

    public string Decode(IReadOnlyList<int> ids)
    {
        var bytes = new List<byte>(ids.Count * 4);
        foreach (int id in ids) bytes.AddRange(TokenBytes(-1, id));
        return Encoding.UTF8.GetString([.. bytes]);
    }

    public string? TokenText(int id) => SpecialTokens.FirstOrDefault(e => e.Value == id).Key;

    /// <summary>Byte-level BPE has no dummy prefix: a token's bytes do not depend on the one before. Special tokens give nothing.</summary>
    public byte[] TokenBytes(int previousId, int id)
    {
        if ((uint)id >= (uint)decodedBytes.Length) throw new ArgumentOutOfRangeException(nameof(id), id, $"token id outside the vocabulary of {decodedBytes.Length}");
        return decodedBytes[id];
    }

    static string Truncate(string s) => s.Length <= 40 ? s : s[..40] + "…";
}
