using System.Buffers.Binary;
using System.Text;
using CombaDistill.IO;

namespace CombaDistill.Tokenization;

/// <summary>
/// The llama2.c tokenizer (<c>tokenizer.bin</c>, <c>tok512.bin</c>): a SentencePiece BPE vocabulary
/// exported as int32 max_token_length, then per token float32 score, int32 length and the piece's
/// bytes (SentencePiece's "▁" already replaced by " "). Encode and decode follow llama2.c's
/// <c>run.c</c> exactly; ids 0, 1, 2 are unk, BOS, EOS and byte b falls back to id b + 3.
/// </summary>
public sealed class Llama2cTokenizer : IByteTokenizer
{
    public const int UnknownId = 0;
    const int ByteFallbackOffset = 3;
    const int FirstNonByteId = ByteFallbackOffset + 256;
    // llama2.c starts its search for the best merge at this score, so lower-scored merges never happen.
    const float NoMergeScore = -1e10f;

    readonly byte[][] pieces;
    readonly float[] scores;
    // Piece bytes as a string with one char per byte (Latin-1), so pieces can be dictionary keys;
    // looked up by span so that candidate merges allocate nothing.
    readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> idByPieceSpan;
    // What each id decodes to: its piece bytes, or the raw byte for "<0xHH>" pieces.
    readonly byte[][] decodedBytes;

    public int VocabSize => pieces.Length;
    public int BosId => 1;
    public int EosId => 2;
    public int MaxTokenLength { get; }
    public string SourcePath { get; }
    public string Description => $"llama2.c tokenizer, {VocabSize} tokens ({Path.GetFileName(SourcePath)})";

    Llama2cTokenizer(byte[][] pieces, float[] scores, int maxTokenLength, string sourcePath)
    {
        this.pieces = pieces;
        this.scores = scores;
        MaxTokenLength = maxTokenLength;
        SourcePath = sourcePath;
        var idByPiece = new Dictionary<string, int>(pieces.Length, StringComparer.Ordinal);
        // llama2.c binary-searches a sorted copy; with duplicate pieces the lowest id is our choice.
        for (int id = 0; id < pieces.Length; id++) idByPiece.TryAdd(Latin1(pieces[id]), id);
        idByPieceSpan = idByPiece.GetAlternateLookup<ReadOnlySpan<char>>();
        decodedBytes = new byte[pieces.Length][];
        for (int id = 0; id < pieces.Length; id++)
            decodedBytes[id] = TryParseBytePiece(pieces[id], out byte b) ? [b] : pieces[id];
    }

    /// <summary>Reads a llama2.c tokenizer file. The vocabulary size is the number of records in the file.</summary>
    /// <param name="expectedVocabSize">When given (e.g. from the model header), the file must hold exactly this many tokens.</param>
    public static Llama2cTokenizer Load(string path, int? expectedVocabSize = null)
    {
        byte[] data;
        data = InputFile.ReadAllBytes(path, "llama2.c tokenizer");
        if (data.Length < 4) throw new InvalidInputException(path, "llama2.c tokenizer is truncated: no max_token_length header");
        int maxTokenLength = BinaryPrimitives.ReadInt32LittleEndian(data);
        if (maxTokenLength <= 0 || maxTokenLength > 1 << 16)
            throw new InvalidInputException(path, $"llama2.c tokenizer header max_token_length = {maxTokenLength} is not plausible (corrupt or not a tokenizer file)");

        var pieces = new List<byte[]>();
        var scores = new List<float>();
        int offset = 4;
        while (offset < data.Length && (expectedVocabSize is null || pieces.Count < expectedVocabSize))
        {
            int id = pieces.Count;
            if (data.Length - offset < 8)
                throw new InvalidInputException(path, $"llama2.c tokenizer is truncated in the score/length of token {id} (at byte {offset} of {data.Length})");
            float score = BinaryPrimitives.ReadSingleLittleEndian(data.AsSpan(offset));
            int length = BinaryPrimitives.ReadInt32LittleEndian(data.AsSpan(offset + 4));
            offset += 8;
            if (length < 0 || length > maxTokenLength)
                throw new InvalidInputException(path, $"llama2.c tokenizer token {id} has length {length}, outside 0..max_token_length ({maxTokenLength}); the file is corrupt");
            if (data.Length - offset < length)
                throw new InvalidInputException(path, $"llama2.c tokenizer is truncated in the bytes of token {id} ({length} bytes needed at byte {offset}, file has {data.Length})");
            pieces.Add(data.AsSpan(offset, length).ToArray());
            scores.Add(score);
            offset += length;
        }
        if (expectedVocabSize is { } expected && (pieces.Count != expected || offset != data.Length))
            throw new InvalidInputException(path, pieces.Count != expected
                ? $"llama2.c tokenizer holds {pieces.Count} tokens, the model expects {expected}"
                : $"llama2.c tokenizer has {data.Length - offset} bytes after the {expected} tokens the model expects");
        if (pieces.Count < FirstNonByteId)
            throw new InvalidInputException(path, $"llama2.c tokenizer holds {pieces.Count} tokens; expected at least {FirstNonByteId} (unk, BOS, EOS and the 256 byte-fallback pieces)");
        for (int b = 0; b < 256; b++)
            if (!TryParseBytePiece(pieces[b + ByteFallbackOffset], out byte parsed) || parsed != b)
                throw new InvalidInputException(path, $"llama2.c tokenizer token {b + ByteFallbackOffset} is \"{Encoding.UTF8.GetString(pieces[b + ByteFallbackOffset])}\", expected the byte-fallback piece <0x{b:X2}>");

        return new Llama2cTokenizer([.. pieces], [.. scores], maxTokenLength, path);
    }

    /// <summary>The raw piece bytes of <paramref name="id"/> as stored in the file (BOS is "\n&lt;s&gt;\n").</summary>
    public ReadOnlySpan<byte> Piece(int id) => pieces[id];

    public float Score(int id) => scores[id];

    /// <summary>
    /// llama2.c's encode: BOS when asked, a dummy-prefix space, one piece per UTF-8 code point (byte
    /// fallback when the code point is not a piece), then repeatedly the adjacent pair whose
    /// concatenation is the highest-scoring piece is merged, the leftmost one on ties. llama2.c
    /// rescans all pairs after every merge (quadratic); a priority queue over a linked list makes
    /// the same choices in O(n log n).
    /// </summary>
    public int[] Encode(string text, bool addBos)
    {
        var symbols = new List<int>(text.Length + 2);
        // BOS takes part in the merges, as in llama2.c (no real vocabulary merges it with anything).
        if (addBos) symbols.Add(BosId);
        if (text.Length > 0) AddCodePoint(symbols, " "u8);
        byte[] utf8 = Encoding.UTF8.GetBytes(text);
        // Like llama2.c: a code point is a lead byte plus up to 3 continuation bytes.
        for (int start = 0; start < utf8.Length;)
        {
            int end = start + 1;
            while (end < utf8.Length && (utf8[end] & 0xC0) == 0x80 && end - start < 4) end++;
            AddCodePoint(symbols, utf8.AsSpan(start, end - start));
            start = end;
        }

        return MergePairs(symbols);
    }

    void AddCodePoint(List<int> symbols, ReadOnlySpan<byte> codePoint)
    {
        Span<char> key = stackalloc char[codePoint.Length];
        for (int i = 0; i < codePoint.Length; i++) key[i] = (char)codePoint[i];
        if (idByPieceSpan.TryGetValue(key, out int id)) symbols.Add(id);
        else foreach (byte b in codePoint) symbols.Add(b + ByteFallbackOffset);
    }

    /// <summary>A candidate merge of the symbols at <c>Left</c> and <c>Right</c>, valid while both still hold the ids it was made from.</summary>
    readonly record struct Candidate(int Left, int Right, int LeftId, int RightId, int MergedId);

    sealed class BestFirst : IComparer<(float Score, int Left)>
    {
        public static readonly BestFirst Instance = new();
        // Higher score first; on equal scores the leftmost pair, as llama2.c's strict '>' keeps the first.
        public int Compare((float Score, int Left) a, (float Score, int Left) b) =>
            a.Score != b.Score ? b.Score.CompareTo(a.Score) : a.Left.CompareTo(b.Left);
    }

    int[] MergePairs(List<int> symbols)
    {
        int n = symbols.Count;
        int[] ids = [.. symbols];
        // Merged symbols keep the position of their left part, so positions keep the text order.
        var next = new int[n];
        var prev = new int[n];
        for (int i = 0; i < n; i++) { next[i] = i + 1; prev[i] = i - 1; }
        var queue = new PriorityQueue<Candidate, (float, int)>(BestFirst.Instance);
        for (int i = 0; i + 1 < n; i++) Enqueue(i, i + 1);

        while (queue.TryDequeue(out var c, out _))
        {
            bool stillAdjacent = ids[c.Left] >= 0 && next[c.Left] == c.Right && ids[c.Left] == c.LeftId && ids[c.Right] == c.RightId;
            if (!stillAdjacent) continue;
            ids[c.Left] = c.MergedId;
            ids[c.Right] = -1;
            next[c.Left] = next[c.Right];
            if (next[c.Left] < n) prev[next[c.Left]] = c.Left;
            if (prev[c.Left] >= 0) Enqueue(prev[c.Left], c.Left);
            if (next[c.Left] < n) Enqueue(c.Left, next[c.Left]);
        }

        var result = new List<int>(n);
        for (int i = 0; i < n; i = next[i]) result.Add(ids[i]);
        return [.. result];

        void Enqueue(int left, int right)
        {
            if (TryMerge(ids[left], ids[right], out int mergedId))
                queue.Enqueue(new Candidate(left, right, ids[left], ids[right], mergedId), (scores[mergedId], left));
        }
    }

    /// <summary>The piece that is the concatenation of two pieces, if the vocabulary has it and llama2.c would merge it.</summary>
    bool TryMerge(int leftId, int rightId, out int mergedId)
    {
        byte[] a = pieces[leftId], b = pieces[rightId];
        int length = a.Length + b.Length;
        if (length > MaxTokenLength) { mergedId = -1; return false; }
        Span<char> key = length <= 256 ? stackalloc char[length] : new char[length];
        for (int i = 0; i < a.Length; i++) key[i] = (char)a[i];
        for (int i = 0; i < b.Length; i++) key[a.Length + i] = (char)b[i];
        return idByPieceSpan.TryGetValue(key, out mergedId) && scores[mergedId] > NoMergeScore;
    }

    public string Decode(IReadOnlyList<int> ids)
    {
        var bytes = new List<byte>(ids.Count * 4);
        for (int i = 0; i < ids.Count; i++) bytes.AddRange(TokenBytes(i == 0 ? -1 : ids[i - 1], ids[i]));
        return Encoding.UTF8.GetString([.. bytes]);
    }

    /// <summary>
    /// llama2.c's decode: the leading space of a piece that follows BOS (or starts the text) is the
    /// dummy prefix and is dropped; "&lt;0xHH&gt;" pieces are raw bytes; unk, BOS and EOS give nothing.
    /// </summary>
    public byte[] TokenBytes(int previousId, int id)
    {
        if ((uint)id >= (uint)pieces.Length) throw new ArgumentOutOfRangeException(nameof(id), id, $"token id outside the vocabulary of {pieces.Length}");
        if (id is UnknownId || id == BosId || id == EosId) return [];
        byte[] bytes = decodedBytes[id];
        bool startsText = previousId < 0 || previousId == BosId;
        return startsText && pieces[id] is [(byte)' ', ..] ? bytes[1..] : bytes;
    }

    /// <summary>One token as text, as llama2.c's decode(prev, id) prints it (a lone byte of a multi-byte character becomes U+FFFD; use <see cref="StreamingDecoder"/>).</summary>
    public string DecodePiece(int previousId, int id) => Encoding.UTF8.GetString(TokenBytes(previousId, id));

    /// <summary>
    /// Writes the same vocabulary as a SentencePiece <c>tokenizer.model</c> (byte-fallback BPE with
    /// Llama's normalization) so Hugging Face and Microsoft.ML.Tokenizers can load it. Spaces become
    /// "▁" again and BOS/EOS become "&lt;s&gt;"/"&lt;/s&gt;", undoing llama2.c's export. The file is
    /// written to a temporary name and renamed, so it is either complete or absent.
    /// </summary>
    public void WriteSentencePieceModel(string path)
    {
        var strict = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);
        var modelPieces = new List<SentencePieceModelProto.Piece>(pieces.Length);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (int id = 0; id < pieces.Length; id++)
        {
            string text;
            try { text = strict.GetString(pieces[id]); }
            catch (DecoderFallbackException e)
            {
                throw new InvalidInputException(SourcePath, $"token {id} is not valid UTF-8, so it cannot be a SentencePiece piece", e);
            }
            var type = SentencePieceModelProto.PieceType.Normal;
            if (id == UnknownId) type = SentencePieceModelProto.PieceType.Unknown;
            else if (id == BosId) { type = SentencePieceModelProto.PieceType.Control; if (text == "\n<s>\n") text = "<s>"; }
            else if (id == EosId) { type = SentencePieceModelProto.PieceType.Control; if (text == "\n</s>\n") text = "</s>"; }
            else if (id < FirstNonByteId) type = SentencePieceModelProto.PieceType.Byte;
            text = text.Replace(' ', '\u2581');
            if (text.Length == 0 || !seen.Add(text))
                throw new InvalidInputException(SourcePath, $"token {id} (\"{text}\") is empty or repeats an earlier piece; SentencePiece needs distinct pieces");
            modelPieces.Add(new(text, scores[id], type));
        }

        byte[] model = SentencePieceModelProto.Serialize(modelPieces, UnknownId, BosId, EosId);
        string fullPath = Path.GetFullPath(path);
        string temporary = Path.Combine(Path.GetDirectoryName(fullPath)!, $".{Path.GetFileName(fullPath)}.{Guid.NewGuid():N}.tmp");
        try
        {
            File.WriteAllBytes(temporary, model);
            File.Move(temporary, fullPath, overwrite: true);
        }
        finally
        {
            if (File.Exists(temporary)) File.Delete(temporary);
        }
    }

    static bool TryParseBytePiece(ReadOnlySpan<byte> piece, out byte value)
    {
        value = 0;
        return piece.Length == 6 && piece.StartsWith("<0x"u8) && piece[5] == (byte)'>'
            && byte.TryParse(Encoding.ASCII.GetString(piece[3..5]), System.Globalization.NumberStyles.AllowHexSpecifier, null, out value);
    }

    static string Latin1(byte[] bytes) => Encoding.Latin1.GetString(bytes);
}
