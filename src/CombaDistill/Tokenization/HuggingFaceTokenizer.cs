using System.Text;
using System.Text.Json;
using CombaDistill.IO;
using Microsoft.ML.Tokenizers;

namespace CombaDistill.Tokenization;

/// <summary>
/// A Hugging Face <c>tokenizer.json</c> with a BPE model: byte-level BPE (GPT-2, Llama 3, Qwen2/2.5/3, SmolLM) and
/// SentencePiece-style BPE over "▁"-marked pieces with byte fallback (Llama 2, Mistral). Encoding runs as Hugging
/// Face's tokenizers do: added tokens are cut out of the text first (longest match, honouring lstrip, rstrip,
/// single_word and normalized), each remaining piece is normalized and pre-tokenized, and every word goes through
/// the BPE model, which is Microsoft.ML.Tokenizers' <see cref="BpeTokenizer"/>. What that model lacks is done here:
/// <c>ignore_merges</c> (a word found whole in the vocabulary is one token) and byte fallback (a character outside
/// the vocabulary becomes its UTF-8 bytes' "&lt;0xHH&gt;" tokens). Decoding drops special tokens and does not
/// clean up spaces, so decoding an encoding gives the text back.
/// </summary>
public sealed class HuggingFaceTokenizer : IByteTokenizer
{
    internal sealed record AddedToken(int Id, string Content, bool Special, bool LStrip, bool RStrip, bool SingleWord, bool Normalized);

    readonly BpeTokenizer bpe;
    readonly Dictionary<string, int> vocab;
    readonly bool byteLevel;
    readonly bool ignoreMerges;
    // SentencePiece-style vocabularies: whether a word may be cut before each "▁" that follows another character.
    readonly bool splitAtMetaspace;
    readonly int? unknownId;
    // Byte b's "<0xHH>" token when the model falls back to bytes; null otherwise.
    readonly int[]? byteTokenIds;
    readonly TextNormalizer? normalizer;
    readonly PreTokenizerStep? preTokenizer;
    readonly AddedTokenMatcher rawAdded;
    readonly AddedTokenMatcher normalizedAdded;
    readonly byte[][] decodedBytes;
    readonly bool[] skipped;
    readonly string?[] tokenText;
    readonly int stripStart;

    public int VocabSize => decodedBytes.Length;
    public int BosId { get; }
    public int EosId { get; }
    /// <summary>Whether the post-processor (or tokenizer_config.json's add_bos_token) puts BOS before a text.</summary>
    public bool AddsBos { get; }
    /// <summary>"byte-level BPE" or "SentencePiece-style BPE".</summary>
    public string Kind { get; }
    /// <summary>The added tokens marked special (dropped when decoding), by id.</summary>
    public IReadOnlyDictionary<int, string> SpecialTokens { get; }
    public string SourcePath { get; }
    public string Description =>
        $"{Kind} tokenizer.json, {VocabSize:N0} tokens, {SpecialTokens.Count} special{(byteTokenIds is null ? "" : ", byte fallback")}{(AddsBos ? ", adds BOS" : "")} ({Path.GetFileName(SourcePath)})";

    HuggingFaceTokenizer(string path, BpeTokenizer bpe, Dictionary<string, int> vocab, bool byteLevel, bool ignoreMerges, int? unknownId,
        int[]? byteTokenIds, TextNormalizer? normalizer, PreTokenizerStep? preTokenizer, List<AddedToken> added,
        byte[][] decodedBytes, bool[] skipped, string?[] tokenText, int stripStart, int bos, int eos, bool addsBos)
    {
        SourcePath = path;
        this.bpe = bpe;
        this.vocab = vocab;
        this.byteLevel = byteLevel;
        this.ignoreMerges = ignoreMerges;
        splitAtMetaspace = !byteLevel && !vocab.Keys.Any(HasInnerMetaspace);
        this.unknownId = unknownId;
        this.byteTokenIds = byteTokenIds;
        this.normalizer = normalizer;
        this.preTokenizer = preTokenizer;
        rawAdded = new AddedTokenMatcher(added.Where(a => !a.Normalized || normalizer is null));
        normalizedAdded = new AddedTokenMatcher(added.Where(a => a.Normalized && normalizer is not null));
        this.decodedBytes = decodedBytes;
        this.skipped = skipped;
        this.tokenText = tokenText;
        this.stripStart = stripStart;
        BosId = bos;
        EosId = eos;
        AddsBos = addsBos;
        Kind = byteLevel ? "byte-level BPE" : "SentencePiece-style BPE";
        SpecialTokens = added.Where(a => a.Special).GroupBy(a => a.Id).ToDictionary(g => g.Key, g => g.First().Content);
    }

    /// <summary>Reads <paramref name="path"/> (tokenizer.json) and, when present, <c>tokenizer_config.json</c> beside it.</summary>
    /// <param name="bosId">Overrides BOS (e.g. config.json's bos_token_id).</param>
    /// <param name="eosId">Overrides EOS (e.g. config.json's eos_token_id).</param>
    public static HuggingFaceTokenizer Load(string path, int? bosId = null, int? eosId = null)
    {
        using var doc = ParseJson(path);
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object) throw new InvalidInputException(path, "expected a JSON object");
        if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw new InvalidInputException(path, "model: expected an object");
        string modelType = model.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()!
            : model.TryGetProperty("merges", out _) ? "BPE" : "";
        if (modelType != "BPE")
            throw new InvalidInputException(path, $"model.type: \"{modelType}\" is not supported (only BPE models are)");

        var vocab = ReadVocab(model, path);
        var merges = ReadMerges(model, path);
        var normalizer = TextNormalizer.Parse(Field(root, "normalizer"), path, "normalizer");
        var preTokenizer = PreTokenizerStep.Parse(Field(root, "pre_tokenizer"), path, "pre_tokenizer");
        var decoder = DecoderSteps.Parse(Field(root, "decoder"), path, "decoder");
        bool byteLevel = preTokenizer?.ByteLevel ?? decoder.ByteLevel;
        var added = ReadAddedTokens(root, path);
        var config = TokenizerConfig.Read(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, "tokenizer_config.json"));
        // transformers adds tokenizer_config.json's added_tokens_decoder entries that tokenizer.json lacks.
        foreach (var extra in config?.AddedTokens ?? [])
            if (!added.Any(a => a.Id == extra.Id)) added.Add(extra);

        bool byteFallback = TokenizerJsonFields.Bool(model, "byte_fallback", path, "model", false);
        bool ignoreMerges = TokenizerJsonFields.Bool(model, "ignore_merges", path, "model", false);
        string? unknown = OptionalString(model, "unk_token", path, "model");
        string? prefix = OptionalString(model, "continuing_subword_prefix", path, "model");
        string? suffix = OptionalString(model, "end_of_word_suffix", path, "model");
        if (!string.IsNullOrEmpty(prefix) || !string.IsNullOrEmpty(suffix))
            throw new InvalidInputException(path, "model: continuing_subword_prefix and end_of_word_suffix are not supported");
        if (unknown is not null && !vocab.ContainsKey(unknown))
            throw new InvalidInputException(path, $"model.unk_token: \"{unknown}\" is not in the vocabulary");

        int vocabSize = Math.Max(vocab.Values.DefaultIfEmpty(-1).Max(), added.Select(a => a.Id).DefaultIfEmpty(-1).Max()) + 1;
        if (vocabSize == 0) throw new InvalidInputException(path, "model.vocab: is empty");

        int[]? byteTokens = null;
        if (byteFallback)
        {
            byteTokens = new int[256];
            for (int b = 0; b < 256; b++) byteTokens[b] = vocab.GetValueOrDefault($"<0x{b:X2}>", -1);
        }

        BpeTokenizer bpe;
        try
        {
            bpe = BpeTokenizer.Create(new BpeOptions(vocab)
            {
                Merges = merges,
                UnknownToken = unknown,
                FuseUnknownTokens = true,
                ByteLevel = byteLevel,
                // Words arrive already split; the model's own default would split them again on whitespace.
                PreTokenizer = new WholeText(),
            });
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException or KeyNotFoundException)
        {
            throw new InvalidInputException(path, $"model: the BPE model cannot be built ({e.Message})", e);
        }

        // What each id decodes to.
        var decoded = new byte[vocabSize][];
        var skipped = new bool[vocabSize];
        var text = new string?[vocabSize];
        foreach (var (piece, id) in vocab) text[id] = piece;
        foreach (var a in added) { text[a.Id] = a.Content; skipped[a.Id] = a.Special; }
        for (int id = 0; id < vocabSize; id++)
        {
            string? piece = text[id];
            decoded[id] = piece is null || skipped[id] ? [] : DecodePiece(piece, decoder);
        }

        int? IdOf(string? content, string file, string field)
        {
            if (content is null) return null;
            var found = added.FirstOrDefault(a => a.Content == content);
            if (found is not null) return found.Id;
            return vocab.TryGetValue(content, out int id) ? id : throw new InvalidInputException(file, $"{field}: \"{content}\" is not a token of {path}");
        }
        var template = LeadingTemplateToken(Field(root, "post_processor"), path);
        int? bos = bosId ?? IdOf(config?.BosToken, config?.Path ?? path, "bos_token") ?? IdOf(template, path, "post_processor");
        int? eos = eosId ?? IdOf(config?.EosToken, config?.Path ?? path, "eos_token");
        if (eos is null)
            throw new InvalidInputException(config?.Path ?? path, "eos_token: no end-of-text token is named (tokenizer_config.json's eos_token, or config.json's eos_token_id)");
        // Byte-level models without a BOS (Qwen, GPT-2) separate documents with their end-of-text token.
        bos ??= eos;
        foreach (var (name, id) in new[] { ("BOS", bos.Value), ("EOS", eos.Value) })
            if ((uint)id >= (uint)vocabSize) throw new InvalidInputException(path, $"{name} id {id} is outside the vocabulary of {vocabSize}");
        bool addsBos = config?.AddBosToken ?? template is not null;

        return new HuggingFaceTokenizer(path, bpe, vocab, byteLevel, ignoreMerges, unknown is null ? null : vocab[unknown], byteTokens,
            normalizer, preTokenizer, added, decoded, skipped, text, decoder.StripStart, bos.Value, eos.Value, addsBos);
    }

    public int[] Encode(string text, bool addBos)
    {
        var ids = new List<int>(text.Length / 3 + 2);
        if (addBos) ids.Add(BosId);
        foreach (var (start, segment, addedId) in rawAdded.Split(text))
        {
            if (addedId >= 0) { ids.Add(addedId); continue; }
            string normalized = normalizer?.Apply(segment) ?? segment;
            foreach (var (pieceStart, piece, normalizedId) in normalizedAdded.Split(normalized))
            {
                if (normalizedId >= 0) { ids.Add(normalizedId); continue; }
                var words = new List<PreToken> { new(piece, start == 0 && pieceStart == 0) };
                if (preTokenizer is not null) words = preTokenizer.Apply(words);
                foreach (var word in words)
                    if (word.Text.Length > 0) EncodeWord(word.Text, ids);
            }
        }
        return [.. ids];
    }

    const char Metaspace = '\u2581';

    static bool HasInnerMetaspace(string piece)
    {
        for (int i = 1; i < piece.Length; i++)
            if (piece[i] == Metaspace && piece[i - 1] != Metaspace) return true;
        return false;
    }

    void EncodeWord(string word, List<int> ids)
    {
        if (ignoreMerges && vocab.TryGetValue(byteLevel ? ByteLevelAlphabet.Encode(word) : word, out int whole))
        {
            ids.Add(whole);
            return;
        }
        if (!splitAtMetaspace)
        {
            EncodeMerged(word, ids);
            return;
        }
        // Without a pre-tokenizer split a SentencePiece-style word is a whole line, and BPE over it takes quadratic
        // time. No token holds "▁" after another character, so no merge crosses the place before such a "▁", and
        // merging the parts gives the same ids as merging the whole.
        int from = 0;
        for (int i = 1; i < word.Length; i++)
        {
            if (word[i] != Metaspace || word[i - 1] == Metaspace) continue;
            EncodeMerged(word[from..i], ids);
            from = i;
        }
        EncodeMerged(word[from..], ids);
    }

    /// <summary>The BPE merges over one word, with byte fallback for characters outside the vocabulary.</summary>
    void EncodeMerged(string word, List<int> ids)
    {
        if (byteTokenIds is null)
        {
            ids.AddRange(bpe.EncodeToIds(word));
            return;
        }
        foreach (var token in bpe.EncodeToTokens(word, out _))
        {
            if (token.Id != unknownId) { ids.Add(token.Id); continue; }
            // Characters outside the vocabulary: their UTF-8 bytes, where every byte has its token.
            var bytes = Encoding.UTF8.GetBytes(word[token.Offset]);
            if (bytes.All(b => byteTokenIds[b] >= 0)) ids.AddRange(bytes.Select(b => byteTokenIds[b]));
            else ids.Add(token.Id);
        }
    }

    public string Decode(IReadOnlyList<int> ids)
    {
        var bytes = new List<byte>(ids.Count * 4);
        bool started = false;
        foreach (int id in ids)
        {
            var piece = Bytes(id);
            if (piece.Length == 0) continue;
            bytes.AddRange(started ? piece : StripLeadingSpaces(piece));
            started = true;
        }
        return Encoding.UTF8.GetString([.. bytes]);
    }

    /// <summary>
    /// The token's bytes; a SentencePiece-style model drops the leading space of the first piece of a text
    /// (at the start, or after a special token such as BOS).
    /// </summary>
    public byte[] TokenBytes(int previousId, int id)
    {
        var piece = Bytes(id);
        bool startsText = previousId < 0 || ((uint)previousId < (uint)skipped.Length && skipped[previousId]);
        return startsText ? StripLeadingSpaces(piece) : piece;
    }

    /// <summary>The token's text as the vocabulary or added tokens write it (e.g. "&lt;|im_end|&gt;", "Ġthe").</summary>
    public string? TokenText(int id) => (uint)id < (uint)tokenText.Length ? tokenText[id] : null;

    byte[] Bytes(int id) =>
        (uint)id < (uint)decodedBytes.Length ? decodedBytes[id]
        : throw new ArgumentOutOfRangeException(nameof(id), id, $"token id outside the vocabulary of {decodedBytes.Length}");

    byte[] StripLeadingSpaces(byte[] piece)
    {
        int n = 0;
        while (n < stripStart && n < piece.Length && piece[n] == (byte)' ') n++;
        return n == 0 ? piece : piece[n..];
    }

    static byte[] DecodePiece(string piece, DecoderSteps decoder)
    {
        if (decoder.ByteLevel) return ByteLevelAlphabet.Decode(piece);
        if (decoder.ByteFallback && piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece[5] == '>'
            && byte.TryParse(piece.AsSpan(3, 2), System.Globalization.NumberStyles.AllowHexSpecifier, null, out byte b))
            return [b];
        if (decoder.ReplaceFrom is { Length: > 0 } from) piece = piece.Replace(from, decoder.ReplaceTo ?? "");
        return Encoding.UTF8.GetBytes(piece);
    }

    static JsonDocument ParseJson(string path)
    {
        var bytes = InputFile.ReadAllBytes(path, "tokenizer.json");
        try { return JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 256 }); }
        catch (JsonException e) { throw new InvalidInputException(path, $"not valid JSON ({e.Message})", e); }
    }

    static JsonElement Field(JsonElement root, string name) => root.TryGetProperty(name, out var v) ? v : default;

    static string? OptionalString(JsonElement element, string name, string file, string field) =>
        !element.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null ? null
        : v.ValueKind == JsonValueKind.String ? v.GetString() : throw new InvalidInputException(file, $"{field}.{name}: expected a string or null");

    static Dictionary<string, int> ReadVocab(JsonElement model, string path)
    {
        if (!model.TryGetProperty("vocab", out var v) || v.ValueKind != JsonValueKind.Object)
            throw new InvalidInputException(path, "model.vocab: expected an object of token → id");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var entry in v.EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.Number || !entry.Value.TryGetInt32(out int id) || id < 0)
                throw new InvalidInputException(path, $"model.vocab[\"{entry.Name}\"]: expected a non-negative integer id");
            if (!vocab.TryAdd(entry.Name, id)) throw new InvalidInputException(path, $"model.vocab: \"{entry.Name}\" appears twice");
        }
        return vocab;
    }

    /// <summary>Merges as "a b" strings, whichever way the file writes them ("a b" or ["a", "b"]).</summary>
    static List<string> ReadMerges(JsonElement model, string path)
    {
        var merges = new List<string>();
        if (!model.TryGetProperty("merges", out var m) || m.ValueKind == JsonValueKind.Null) return merges;
        if (m.ValueKind != JsonValueKind.Array) throw new InvalidInputException(path, "model.merges: expected an array");
        int i = 0;
        foreach (var merge in m.EnumerateArray())
        {
            if (merge.ValueKind == JsonValueKind.String && merge.GetString()!.Split(' ') is { Length: 2 })
                merges.Add(merge.GetString()!);
            else if (merge.ValueKind == JsonValueKind.Array && merge.GetArrayLength() == 2
                && merge[0].ValueKind == JsonValueKind.String && merge[1].ValueKind == JsonValueKind.String
                && !merge[0].GetString()!.Contains(' ') && !merge[1].GetString()!.Contains(' '))
                merges.Add($"{merge[0].GetString()} {merge[1].GetString()}");
            else
                throw new InvalidInputException(path, $"model.merges[{i}]: expected \"a b\" or [\"a\", \"b\"] (pieces without spaces)");
            i++;
        }
        return merges;
    }

    static List<AddedToken> ReadAddedTokens(JsonElement root, string path)
    {
        var added = new List<AddedToken>();
        if (!root.TryGetProperty("added_tokens", out var list) || list.ValueKind == JsonValueKind.Null) return added;
        if (list.ValueKind != JsonValueKind.Array) throw new InvalidInputException(path, "added_tokens: expected an array");
        int i = 0;
        foreach (var a in list.EnumerateArray())
        {
            string field = $"added_tokens[{i++}]";
            if (a.ValueKind != JsonValueKind.Object || !a.TryGetProperty("id", out var idElement) || !idElement.TryGetInt32(out int id) || id < 0)
                throw new InvalidInputException(path, $"{field}: expected an object with a non-negative integer id");
            added.Add(ReadAddedToken(a, id, path, field));
        }
        return added;
    }

    /// <summary>One added token's content and options (an entry of added_tokens, or of added_tokens_decoder).</summary>
    internal static AddedToken ReadAddedToken(JsonElement a, int id, string path, string field)
    {
        string content = TokenizerJsonFields.String(a, "content", path, field);
        if (content.Length == 0) throw new InvalidInputException(path, $"{field}.content: is empty");
        return new AddedToken(id, content,
            TokenizerJsonFields.Bool(a, "special", path, field, false),
            TokenizerJsonFields.Bool(a, "lstrip", path, field, false),
            TokenizerJsonFields.Bool(a, "rstrip", path, field, false),
            TokenizerJsonFields.Bool(a, "single_word", path, field, false),
            TokenizerJsonFields.Bool(a, "normalized", path, field, false));
    }

    /// <summary>The special token a TemplateProcessing post-processor puts before a single text (BOS), if any.</summary>
    static string? LeadingTemplateToken(JsonElement processor, string path)
    {
        if (processor.ValueKind != JsonValueKind.Object) return null;
        string type = TokenizerJsonFields.Type(processor, path, "post_processor");
        if (type == "Sequence")
        {
            foreach (var p in TokenizerJsonFields.Array(processor, "processors", path, "post_processor"))
                if (LeadingTemplateToken(p, path) is { } found) return found;
            return null;
        }
        if (type != "TemplateProcessing" || !processor.TryGetProperty("single", out var single) || single.ValueKind != JsonValueKind.Array
            || single.GetArrayLength() == 0)
            return null;
        var first = single[0];
        if (!first.TryGetProperty("SpecialToken", out var special) || !special.TryGetProperty("id", out var name) || name.ValueKind != JsonValueKind.String)
            return null;
        // The template names an entry of special_tokens, whose tokens are what is inserted.
        if (processor.TryGetProperty("special_tokens", out var table) && table.TryGetProperty(name.GetString()!, out var entry)
            && entry.TryGetProperty("tokens", out var tokens) && tokens.ValueKind == JsonValueKind.Array && tokens.GetArrayLength() == 1)
            return tokens[0].GetString();
        return name.GetString();
    }

    /// <summary>A pre-tokenizer that leaves the text whole: each word is encoded as one piece.</summary>
    sealed class WholeText : PreTokenizer
    {
        public override IEnumerable<(int Offset, int Length)> PreTokenize(string text) => text.Length == 0 ? [] : [(0, text.Length)];
        public override IEnumerable<(int Offset, int Length)> PreTokenize(ReadOnlySpan<char> text) => text.Length == 0 ? [] : [(0, text.Length)];
    }

    /// <summary>Finds added tokens in text: at each position the longest one that starts there, as Hugging Face does.</summary>
    sealed class AddedTokenMatcher
    {
        readonly Dictionary<char, AddedToken[]> byFirstChar;

        public AddedTokenMatcher(IEnumerable<AddedToken> tokens) =>
            byFirstChar = tokens.GroupBy(t => t.Content[0]).ToDictionary(g => g.Key, g => g.OrderByDescending(t => t.Content.Length).ToArray());

        /// <summary>The text as (start, text, -1) pieces and (start, "", id) added tokens, in order.</summary>
        public IEnumerable<(int Start, string Text, int Id)> Split(string text)
        {
            if (byFirstChar.Count == 0) { yield return (0, text, -1); yield break; }
            int pieceStart = 0;
            for (int i = 0; i < text.Length;)
            {
                var match = byFirstChar.TryGetValue(text[i], out var candidates)
                    ? candidates.FirstOrDefault(t => string.CompareOrdinal(text, i, t.Content, 0, t.Content.Length) == 0
                        && (!t.SingleWord || IsWordBoundary(text, i, i + t.Content.Length)))
                    : null;
                if (match is null) { i++; continue; }
                int start = i, end = i + match.Content.Length;
                if (match.LStrip) while (start > pieceStart && char.IsWhiteSpace(text[start - 1])) start--;
                if (match.RStrip) while (end < text.Length && char.IsWhiteSpace(text[end])) end++;
                if (start > pieceStart) yield return (pieceStart, text[pieceStart..start], -1);
                yield return (start, "", match.Id);
                pieceStart = i = end;
            }
            if (pieceStart < text.Length) yield return (pieceStart, text[pieceStart..], -1);
        }

        static bool IsWordBoundary(string text, int start, int end) =>
            (start == 0 || !char.IsLetterOrDigit(text[start - 1])) && (end == text.Length || !char.IsLetterOrDigit(text[end]));
    }
}

/// <summary>The fields of <c>tokenizer_config.json</c> that choose BOS and EOS, and its added_tokens_decoder.</summary>
sealed record TokenizerConfig(string Path, string? BosToken, string? EosToken, bool? AddBosToken, IReadOnlyList<HuggingFaceTokenizer.AddedToken> AddedTokens)
{
    /// <summary>Null when the file does not exist.</summary>
    public static TokenizerConfig? Read(string path)
    {
        if (!File.Exists(path)) return null;
        try
        {
            using var doc = JsonDocument.Parse(InputFile.ReadAllBytes(path, "tokenizer_config.json", maxBytes: 64L << 20));
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new InvalidInputException(path, "expected a JSON object");
            bool? addBos = root.TryGetProperty("add_bos_token", out var a) && a.ValueKind is JsonValueKind.True or JsonValueKind.False ? a.GetBoolean() : null;
            var added = new List<HuggingFaceTokenizer.AddedToken>();
            if (root.TryGetProperty("added_tokens_decoder", out var decoder) && decoder.ValueKind == JsonValueKind.Object)
                foreach (var entry in decoder.EnumerateObject())
                {
                    string field = $"added_tokens_decoder[\"{entry.Name}\"]";
                    if (!int.TryParse(entry.Name, out int id) || id < 0 || entry.Value.ValueKind != JsonValueKind.Object)
                        throw new InvalidInputException(path, $"{field}: expected a non-negative integer id mapping to {{\"content\": ...}}");
                    added.Add(HuggingFaceTokenizer.ReadAddedToken(entry.Value, id, path, field));
                }
            return new TokenizerConfig(path, Token(root, "bos_token", path), Token(root, "eos_token", path), addBos, added);
        }
        catch (JsonException e) { throw new InvalidInputException(path, $"not valid JSON ({e.Message})", e); }
    }

    /// <summary>A token field: a string, {"content": "..."} (an AddedToken written out), or null.</summary>
    static string? Token(JsonElement root, string name, string path)
    {
        if (!root.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind == JsonValueKind.String) return v.GetString();
        if (v.ValueKind == JsonValueKind.Object && v.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String) return c.GetString();
        throw new InvalidInputException(path, $"{name}: expected a string, {{\"content\": ...}} or null");
    }
}
