using System.Text;
using CombaDistill.IO;
using Google.Protobuf;
using MlLlamaTokenizer = Microsoft.ML.Tokenizers.LlamaTokenizer;

namespace CombaDistill.Tokenization;

/// <summary>
/// A SentencePiece BPE <c>tokenizer.model</c> (Llama 1/2, Mistral, TinyLlama and our own imports):
/// encoding is Microsoft.ML.Tokenizers' <see cref="MlLlamaTokenizer"/>; decoding maps pieces to
/// bytes here ("▁" is a space, "&lt;0xHH&gt;" byte pieces are raw bytes, control pieces give nothing)
/// so that whole-sequence and streaming decoding agree byte for byte.
/// </summary>
public sealed class SentencePieceTokenizer : IByteTokenizer
{
    readonly MlLlamaTokenizer inner;
    // What each id decodes to, and whether that starts with a "▁" that may be the dummy prefix.
    readonly byte[][] decodedBytes;
    readonly bool[] startsWithSpace;
    readonly string[] pieceTexts;

    public int VocabSize => decodedBytes.Length;
    public int BosId { get; }
    public int EosId { get; }
    public string SourcePath { get; }
    public string Description => $"SentencePiece BPE tokenizer, {VocabSize} tokens ({Path.GetFileName(SourcePath)})";

    SentencePieceTokenizer(MlLlamaTokenizer inner, byte[][] decodedBytes, bool[] startsWithSpace, string[] pieceTexts, string sourcePath, int? bosId, int? eosId)
    {
        this.pieceTexts = pieceTexts;
        this.inner = inner;
        this.decodedBytes = decodedBytes;
        this.startsWithSpace = startsWithSpace;
        SourcePath = sourcePath;
        BosId = bosId ?? inner.BeginningOfSentenceId;
        EosId = eosId ?? inner.EndOfSentenceId;
    }

    /// <param name="bosId">Overrides the model's BOS id (e.g. from config.json).</param>
    /// <param name="eosId">Overrides the model's EOS id.</param>
    public static SentencePieceTokenizer Load(string path, int? bosId = null, int? eosId = null)
    {
        byte[] model;
        model = InputFile.ReadAllBytes(path, "SentencePiece model");

        List<(string Text, int Type)> pieces;
        try { pieces = ReadPieces(model); }
        catch (InvalidProtocolBufferException e)
        {
            throw new InvalidInputException(path, $"not a SentencePiece model (protobuf ModelProto): {e.Message}", e);
        }
        if (pieces.Count == 0) throw new InvalidInputException(path, "SentencePiece model has no pieces");

        MlLlamaTokenizer inner;
        try
        {
            using var stream = new MemoryStream(model, writable: false);
            inner = MlLlamaTokenizer.Create(stream, addBeginOfSentence: false, addEndOfSentence: false);
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or InvalidProtocolBufferException or NotSupportedException)
        {
            throw new InvalidInputException(path, $"SentencePiece model cannot be used: {e.Message}", e);
        }

        var decoded = new byte[pieces.Count][];
        var startsWithSpace = new bool[pieces.Count];
        for (int id = 0; id < pieces.Count; id++)
        {
            var (text, type) = pieces[id];
            startsWithSpace[id] = type == (int)SentencePieceModelProto.PieceType.Normal && text.StartsWith('\u2581');
            decoded[id] = type switch
            {
                (int)SentencePieceModelProto.PieceType.Control or (int)SentencePieceModelProto.PieceType.Unknown
                    or (int)SentencePieceModelProto.PieceType.Unused => [],
                (int)SentencePieceModelProto.PieceType.Byte when TryParseBytePiece(text, out byte b) => [b],
                _ => Encoding.UTF8.GetBytes(text.Replace('\u2581', ' ')),
            };
        }
        foreach (var (name, id) in new[] { ("BOS", bosId), ("EOS", eosId) })
            if (id is { } given && (uint)given >= (uint)pieces.Count)
                throw new InvalidInputException(path, $"{name} id {given} is outside the vocabulary of {pieces.Count}");
        return new SentencePieceTokenizer(inner, decoded, startsWithSpace, [.. pieces.Select(p => p.Text)], path, bosId, eosId);
    }

    public int[] Encode(string text, bool addBos)
    {
        var ids = inner.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false);
        return addBos ? [BosId, .. ids] : [.. ids];
    }

    public string Decode(IReadOnlyList<int> ids)
    {
        var bytes = new List<byte>(ids.Count * 4);
        for (int i = 0; i < ids.Count; i++) bytes.AddRange(TokenBytes(i == 0 ? -1 : ids[i - 1], ids[i]));
        return Encoding.UTF8.GetString([.. bytes]);
    }

    public string? TokenText(int id) => (uint)id < (uint)pieceTexts.Length ? pieceTexts[id] : null;

    /// <summary>SentencePiece drops the dummy-prefix space of the first piece of a text (at the start or after BOS).</summary>
    public byte[] TokenBytes(int previousId, int id)
    {
        if ((uint)id >= (uint)decodedBytes.Length) throw new ArgumentOutOfRangeException(nameof(id), id, $"token id outside the vocabulary of {decodedBytes.Length}");
        if (id == BosId || id == EosId) return [];
        byte[] bytes = decodedBytes[id];
        bool startsText = previousId < 0 || previousId == BosId;
        return startsText && startsWithSpace[id] ? bytes[1..] : bytes;
    }

    /// <summary>The piece texts and types of a ModelProto (field 1: repeated SentencePiece {piece = 1, type = 3}).</summary>
    static List<(string Text, int Type)> ReadPieces(byte[] model)
    {
        var pieces = new List<(string, int)>();
        var input = new CodedInputStream(model);
        for (uint tag; (tag = input.ReadTag()) != 0;)
        {
            if (WireFormat.GetTagFieldNumber(tag) != 1 || WireFormat.GetTagWireType(tag) != WireFormat.WireType.LengthDelimited)
            {
                input.SkipLastField();
                continue;
            }
            var piece = new CodedInputStream(input.ReadBytes().ToByteArray());
            string text = "";
            int type = (int)SentencePieceModelProto.PieceType.Normal;
            for (uint pieceTag; (pieceTag = piece.ReadTag()) != 0;)
            {
                switch (WireFormat.GetTagFieldNumber(pieceTag))
                {
                    case 1: text = piece.ReadString(); break;
                    case 3: type = piece.ReadInt32(); break;
                    default: piece.SkipLastField(); break;
                }
            }
            pieces.Add((text, type));
        }
        return pieces;
    }

    static bool TryParseBytePiece(string piece, out byte value)
    {
        value = 0;
        return piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece[5] == '>'
            && byte.TryParse(piece.AsSpan(3, 2), System.Globalization.NumberStyles.AllowHexSpecifier, null, out value);
    }
}
