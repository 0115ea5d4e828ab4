using System.Text.Json;
using CombaDistill.IO;

namespace CombaDistill.Tokenization;

/// <summary>Picks the tokenizer of a model folder by the files present.</summary>
public static class TokenizerLoader
{
    /// <summary>
    /// <c>tokenizer.bin</c> (llama2.c) is preferred when present, since it is what llama2.c models
    /// were trained with and encodes exactly; then <c>tokenizer.json</c>, which transformers' fast
    /// tokenizers use (with <c>tokenizer_config.json</c> beside it for BOS and EOS); otherwise <c>tokenizer.model</c> (or
    /// <c>original/tokenizer.model</c>, where Hugging Face's Llama 3 repositories keep it), which is
    /// either a SentencePiece protobuf or Llama 3's tiktoken text, told apart by content. For
    /// tiktoken, special-token names come from <c>tokenizer_config.json</c> when it lists them
    /// (Llama 3.1 renamed some reserved tokens), else Llama 3's defaults.
    /// </summary>
    /// <param name="bosId">Overrides the tokenizer's BOS id (e.g. config.json's bos_token_id); not for llama2.c, whose ids are fixed.</param>
    /// <param name="eosId">Overrides the tokenizer's EOS id (e.g. config.json's eos_token_id).</param>
    public static ITokenizer Load(string folder, int? bosId = null, int? eosId = null)
    {
        // (Modeling.ModelFolder gives the fuller message with the import hint; it sits above this layer, and every command
        // checks the model folder through it before the tokenizer loads)
        if (!Directory.Exists(folder)) throw new InvalidInputException(folder, File.Exists(folder) ? "is a file; expected a model folder" : "model folder does not exist");
        string bin = Path.Combine(folder, "tokenizer.bin");
        string model = Path.Combine(folder, "tokenizer.model");
        string originalModel = Path.Combine(folder, "original", "tokenizer.model");
        string json = Path.Combine(folder, "tokenizer.json");

        if (File.Exists(bin)) return Llama2cTokenizer.Load(bin);
        if (File.Exists(json)) return HuggingFaceTokenizer.Load(json, bosId, eosId);
        if (!File.Exists(model) && File.Exists(originalModel)) model = originalModel;
        if (File.Exists(model))
            return IsTiktokenText(model)
                ? Llama3Tokenizer.Load(model, SpecialTokensFromConfig(Path.Combine(folder, "tokenizer_config.json")), bosId, eosId)
                : SentencePieceTokenizer.Load(model, bosId, eosId);
        throw new InvalidInputException(null, $"no tokenizer found in {folder}: expected tokenizer.json, tokenizer.model or tokenizer.bin");
    }

    /// <summary>
    /// The tokenizer of a model folder, with the model's BOS/EOS ids, checked against the model's vocabulary at load:
    /// a tokenizer with more tokens than the model would feed it ids it has no embedding for, and one with fewer would
    /// fail on the first id it cannot decode, halfway through a generation. Models whose vocabulary is padded beyond
    /// their tokenizer (Qwen2 pads by a few hundred) are accepted while the gap is at most 1% of the vocabulary.
    /// </summary>
    public static ITokenizer ForModel(string folder, int modelVocabSize, int bosId, int eosId)
    {
        var tokenizer = Load(folder, bosId, eosId);
        if (tokenizer.VocabSize > modelVocabSize)
            throw new InvalidInputException(folder, $"tokenizer ({tokenizer.Description}) has {tokenizer.VocabSize} tokens, more than config.json's vocab_size {modelVocabSize}");
        if (modelVocabSize - tokenizer.VocabSize > modelVocabSize / 100)
            throw new InvalidInputException(folder, $"tokenizer ({tokenizer.Description}) has {tokenizer.VocabSize} tokens, far fewer than config.json's vocab_size {modelVocabSize}; is it this model's tokenizer?");
        foreach (var (field, id) in new[] { ("bos_token_id", bosId), ("eos_token_id", eosId) })
            if (id >= tokenizer.VocabSize)
                throw new InvalidInputException(folder, $"config.json's {field} {id} is outside the tokenizer's {tokenizer.VocabSize} tokens");
        return tokenizer;
    }

    /// <summary>
    /// The special tokens of <c>tokenizer_config.json</c>'s <c>added_tokens_decoder</c>
    /// ({"128000": {"content": "&lt;|begin_of_text|&gt;", ...}, ...}); null when the file or the
    /// field is absent.
    /// </summary>
    static Dictionary<string, int>? SpecialTokensFromConfig(string path)
    {
        if (!File.Exists(path)) return null;
        try
        {
            using var config = JsonDocument.Parse(InputFile.ReadAllBytes(path, "tokenizer_config.json"));
            if (!config.RootElement.TryGetProperty("added_tokens_decoder", out var added) || added.ValueKind != JsonValueKind.Object)
                return null;
            var tokens = new Dictionary<string, int>(StringComparer.Ordinal);
            foreach (var entry in added.EnumerateObject())
            {
                if (!int.TryParse(entry.Name, out int id) || id < 0 || entry.Value.ValueKind != JsonValueKind.Object
                    || !entry.Value.TryGetProperty("content", out var content) || content.ValueKind != JsonValueKind.String)
                    throw new InvalidInputException(path, $"added_tokens_decoder entry \"{entry.Name}\" is not {{\"<id>\": {{\"content\": \"<token>\"}}}}");
                if (!tokens.TryAdd(content.GetString()!, id))
                    throw new InvalidInputException(path, $"added_tokens_decoder lists \"{content.GetString()}\" twice");
            }
            return tokens.Count > 0 ? tokens : null;
        }
        catch (JsonException e)
        {
            throw new InvalidInputException(path, $"not valid JSON: {e.Message}", e);
        }
    }

    /// <summary>
    /// A tiktoken file starts with a line "base64 rank"; a SentencePiece ModelProto starts with the
    /// tag of field 1 (0x0A) followed by binary lengths, which is never such a line.
    /// </summary>
    static bool IsTiktokenText(string path)
    {
        Span<byte> head = stackalloc byte[256];
        int n;
        using (var stream = InputFile.OpenRead(path, "tokenizer model")) n = stream.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        int newline = head[..n].IndexOf((byte)'\n');
        var line = newline >= 0 ? head[..newline] : head[..n];
        int space = line.IndexOf((byte)' ');
        if (space <= 0 || space == line.Length - 1) return false;
        foreach (byte b in line[..space])
            if (!(char.IsAsciiLetterOrDigit((char)b) || b is (byte)'+' or (byte)'/' or (byte)'=')) return false;
        foreach (byte b in line[(space + 1)..].TrimEnd((byte)'\r'))
            if (!char.IsAsciiDigit((char)b)) return false;
        return true;
    }
}
