namespace CombaDistill.Tokenization;

/// <summary>
/// GPT-2's byte-level alphabet: each of the 256 byte values is written as one printable character so that
/// a byte-level BPE vocabulary is plain text. Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand
/// for themselves; the other 68 (controls, space, soft hyphen) take U+0100 onwards in byte order, so a
/// space is 'Ġ' (U+0120) and a newline 'Ċ' (U+010A).
/// </summary>
public static class ByteLevelAlphabet
{
    static readonly char[] CharOfByte = Build();
    static readonly Dictionary<char, byte> ByteOfChar = Enumerable.Range(0, 256).ToDictionary(b => CharOfByte[b], b => (byte)b);

    static char[] Build()
    {
        var chars = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
            chars[b] = printable ? (char)b : (char)next++;
        }
        return chars;
    }

    /// <summary>The characters standing for the UTF-8 bytes of <paramref name="text"/>.</summary>
    public static string Encode(ReadOnlySpan<char> text)
    {
        var bytes = System.Text.Encoding.UTF8.GetBytes(text.ToArray());
        return string.Create(bytes.Length, bytes, (span, b) =>
        {
            for (int i = 0; i < b.Length; i++) span[i] = CharOfByte[b[i]];
        });
    }

    /// <summary>
    /// The bytes a byte-level token stands for. A character outside the alphabet (possible in added tokens)
    /// contributes its own UTF-8 bytes, as Hugging Face's ByteLevel decoder does.
    /// </summary>
    public static byte[] Decode(string token)
    {
        var bytes = new List<byte>(token.Length);
        for (int i = 0; i < token.Length; i++)
        {
            if (ByteOfChar.TryGetValue(token[i], out byte b)) { bytes.Add(b); continue; }
            int width = char.IsSurrogatePair(token, i) ? 2 : 1;
            bytes.AddRange(System.Text.Encoding.UTF8.GetBytes(token.Substring(i, width)));
            i += width - 1;
        }
        return [.. bytes];
    }
}
