using System.Buffers.Binary;
using System.Text;
using CombaDistill.IO;

namespace CombaDistill.Distillation;

/// <summary>
/// A pre-tokenized stream of ids: a 32-byte header, then the ids little-endian as uint16 (vocabularies up to 65 536)
/// or uint32. Layout in docs/recipes.md. The header records the vocabulary size so that ids made with another
/// tokenizer are refused instead of silently read as garbage.
/// </summary>
public static class TokenFile
{
    public const string Magic = "CDTOKENS";
    public const int Version = 1;
    public const int HeaderBytes = 32;

    /// <summary>Writes atomically (temporary sibling, then rename).</summary>
    public static void Write(string path, ReadOnlySpan<int> tokens, int vocabSize)
    {
        if (vocabSize <= 0) throw new ArgumentOutOfRangeException(nameof(vocabSize));
        var width = vocabSize <= 1 << 16 ? 2 : 4;
        var bytes = new byte[HeaderBytes + (long)tokens.Length * width];
        Encoding.ASCII.GetBytes(Magic, bytes);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(8), Version);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(12), (uint)width);
        BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(16), (ulong)tokens.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(24), (uint)vocabSize);
        var body = bytes.AsSpan(HeaderBytes);
        for (var i = 0; i < tokens.Length; i++)
        {
            var id = tokens[i];
            if (id < 0 || id >= vocabSize) throw new ArgumentException($"token {i} is {id}, outside the vocabulary of {vocabSize}");
            if (width == 2) BinaryPrimitives.WriteUInt16LittleEndian(body[(i * 2)..], (ushort)id);
            else BinaryPrimitives.WriteUInt32LittleEndian(body[(i * 4)..], (uint)id);
        }
        AtomicFile.WriteAllBytes(path, bytes);
    }

    /// <summary>
    /// Reads the first <paramref name="maxTokens"/> ids (all when null), checking the header, the length and that each
    /// id is below the recorded vocabulary size and below <paramref name="vocabSize"/> (the model's).
    /// </summary>
    public static int[] Read(string path, int vocabSize, long? maxTokens = null)
    {
        using var stream = InputFile.OpenRead(path, "token file");
        var (width, count) = ReadHeader(path, stream, vocabSize);
        var take = (int)Math.Min(count, (ulong)Math.Min(maxTokens ?? long.MaxValue, Array.MaxLength / width));
        var body = new byte[(long)take * width];
        try { stream.ReadExactly(body); }
        catch (EndOfStreamException e) { throw new InvalidInputException(path, "token file shrank while it was read", e); }
        var tokens = new int[take];
        for (var i = 0; i < take; i++)
        {
            var id = width == 2 ? BinaryPrimitives.ReadUInt16LittleEndian(body.AsSpan(i * 2)) : (long)BinaryPrimitives.ReadUInt32LittleEndian(body.AsSpan(i * 4));
            if (id >= vocabSize) throw new InvalidInputException(path, $"token {i} is {id}, outside the teacher's vocabulary of {vocabSize}");
            tokens[i] = (int)id;
        }
        return tokens;
    }

    /// <summary>Checks the header and the file's length against it without reading the ids (a recipe's data, before a run folder is made).</summary>
    public static void CheckHeader(string path)
    {
        using var stream = InputFile.OpenRead(path, "token file");
        ReadHeader(path, stream, vocabSize: int.MaxValue);
    }

    /// <summary>True when <paramref name="path"/> is a regular file that starts with the token file magic (a file this tool wrote).</summary>
    public static bool HasMagic(string path)
    {
        if (!File.Exists(path)) return false;
        Span<byte> start = stackalloc byte[Magic.Length];
        using var stream = InputFile.OpenRead(path, "token file");
        return stream.ReadAtLeast(start, start.Length, throwOnEndOfStream: false) == start.Length && Encoding.ASCII.GetString(start) == Magic;
    }

    /// <summary>Bytes per token and the token count, checked against the file's length without overflow.</summary>
    static (int Width, ulong Count) ReadHeader(string path, FileStream stream, int vocabSize)
    {
        var header = new byte[HeaderBytes];
        if (stream.ReadAtLeast(header, HeaderBytes, throwOnEndOfStream: false) < HeaderBytes || Encoding.ASCII.GetString(header, 0, 8) != Magic)
            throw new InvalidInputException(path, $"not a token file: expected the {HeaderBytes}-byte header starting with '{Magic}' (docs/recipes.md)");
        var version = BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(8));
        if (version != Version) throw new InvalidInputException(path, $"token file version {version}; this build reads version {Version}");
        var width = BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(12));
        if (width is not (2 or 4)) throw new InvalidInputException(path, $"header field 'bytes per token' is {width}; expected 2 or 4");
        var count = BinaryPrimitives.ReadUInt64LittleEndian(header.AsSpan(16));
        var recordedVocab = BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(24));
        // the body's length divided by the width, not the count multiplied by it: a count near 2^64 must not wrap
        var bodyBytes = (ulong)(stream.Length - HeaderBytes);
        if (bodyBytes % width != 0 || bodyBytes / width != count)
            throw new InvalidInputException(path, $"is {stream.Length} bytes, but its header promises {count} tokens of {width} bytes: truncated or damaged");
        if (recordedVocab != 0 && recordedVocab > vocabSize)
            throw new InvalidInputException(path, $"was made for a vocabulary of {recordedVocab} tokens; the teacher has {vocabSize}: another tokenizer's ids");
        return ((int)width, count);
    }
}
