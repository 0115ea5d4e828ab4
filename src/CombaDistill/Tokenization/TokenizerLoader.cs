using CombaDistill.IO;

namespace CombaDistill.Tokenization;

/// <summary>Picks the tokenizer of a model folder by the files present.</summary>
public static class TokenizerLoader
{
    /// <summary>
    /// <c>tokenizer.bin</c> (llama2.c) is preferred when present, since it is what llama2.c models
    /// were trained with and encodes exactly; otherwise <c>tokenizer.model</c>, which is either a
    /// SentencePiece protobuf or Llama 3's tiktoken text (told apart by content).
    /// </summary>
    /// <param name="bosId">Overrides the tokenizer's BOS id (e.g. config.json's bos_token_id); not for llama2.c, whose ids are fixed.</param>
    /// <param name="eosId">Overrides the tokenizer's EOS id (e.g. config.json's eos_token_id).</param>
    public static ITokenizer Load(string folder, int? bosId = null, int? eosId = null)
    {
        if (!Directory.Exists(folder)) throw new InvalidInputException(folder, "model folder does not exist");
        string bin = Path.Combine(folder, "tokenizer.bin");
        string model = Path.Combine(folder, "tokenizer.model");
        string json = Path.Combine(folder, "tokenizer.json");

        if (File.Exists(bin)) return Llama2cTokenizer.Load(bin);
        if (File.Exists(model))
            return IsTiktokenText(model)
                ? Llama3Tokenizer.Load(model, bosId: bosId, eosId: eosId)
                : SentencePieceTokenizer.Load(model, bosId, eosId);
        if (File.Exists(json))
            throw new InvalidInputException(json, "tokenizer.json without tokenizer.model is not supported yet");
        throw new InvalidInputException(null, $"no tokenizer found in {folder}: expected tokenizer.model or tokenizer.bin");
    }

    /// <summary>
    /// A tiktoken file starts with a line "base64 rank"; a SentencePiece ModelProto starts with the
    /// tag of field 1 (0x0A) followed by binary lengths, which is never such a line.
    /// </summary>
    static bool IsTiktokenText(string path)
    {
        Span<byte> head = stackalloc byte[256];
        int n;
        using (var stream = File.OpenRead(path)) n = stream.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
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
