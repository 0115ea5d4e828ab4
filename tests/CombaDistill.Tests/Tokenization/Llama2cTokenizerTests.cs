using System.Text;
using CombaDistill.IO;
using CombaDistill.Tests.Support;
using CombaDistill.Tokenization;
using CsCheck;

namespace CombaDistill.Tests.Tokenization;

public class Llama2cTokenizerTests
{
    internal static readonly Llama2cTokenizer Tok512 = Llama2cTokenizer.Load(Shared.Tok512Bin);
    const int Space = 410; // " " in tok512, the dummy prefix when nothing merges with it

    [Fact]
    public void Loads_tok512_with_its_documented_layout()
    {
        Assert.Equal(512, Tok512.VocabSize);
        Assert.Equal(7, Tok512.MaxTokenLength);
        Assert.Equal((1, 2), (Tok512.BosId, Tok512.EosId));
        Assert.Equal("\n<s>\n"u8.ToArray(), Tok512.Piece(1).ToArray());
        Assert.Equal("<0x0A>"u8.ToArray(), Tok512.Piece(13).ToArray());
        Assert.Equal(" t"u8.ToArray(), Tok512.Piece(259).ToArray());
        Assert.Equal(" "u8.ToArray(), Tok512.Piece(Space).ToArray());
        Assert.Equal(-1f, Tok512.Score(260));
        Assert.Contains("512 tokens", Tok512.Description);
    }

    [Fact]
    public void Encodes_the_llama2c_reference_vector()
    {
        Assert.Equal([403, 407, 261, 378], Tok512.Encode("Once upon a time", addBos: false));
    }

    [Fact]
    public void Bos_is_added_only_when_asked_and_eos_never()
    {
        Assert.Equal([1, 403, 407, 261, 378], Tok512.Encode("Once upon a time", addBos: true));
        Assert.Empty(Tok512.Encode("", addBos: false));
        Assert.Equal([1], Tok512.Encode("", addBos: true));
        Assert.DoesNotContain(Tok512.EosId, Tok512.Encode("The end.\n", addBos: true));
    }

    [Fact]
    public void Decode_drops_control_tokens_and_the_dummy_space_of_the_first_piece()
    {
        Assert.Equal("Once upon a time", Tok512.Decode([1, 403, 407, 261, 378]));
        Assert.Equal("Once upon a time", Tok512.Decode([403, 407, 261, 378]));
        Assert.Equal("Once upon a time", Tok512.Decode([1, 403, 407, 261, 378, 2]));
        // Later pieces keep their space; a BOS in the middle starts a new text, as in llama2.c.
        Assert.Equal("uponOnce", Tok512.Decode([407, 1, 403]));
        Assert.Equal("Once upon", Tok512.Decode([403, 2, 407]));
    }

    [Fact]
    public void Characters_outside_the_vocabulary_fall_back_to_bytes_and_round_trip()
    {
        // "ü" = C3 BC, "😀" = F0 9F 98 80, "中" = E4 B8 AD: id = byte + 3.
        Assert.Equal([Space, 0xC3 + 3, 0xBC + 3], Tok512.Encode("ü", addBos: false));
        Assert.Equal([Space, 0xF0 + 3, 0x9F + 3, 0x98 + 3, 0x80 + 3], Tok512.Encode("😀", addBos: false));
        Assert.Equal([Space, 0xE4 + 3, 0xB8 + 3, 0xAD + 3], Tok512.Encode("中", addBos: false));
        // "é" and "™" are pieces of their own (485, 507), so no fallback.
        Assert.Equal([Space, 485, Space, 507], Tok512.Encode("é ™", addBos: false));
        foreach (string text in new[] { "Café au lait, Grüße, 😀 and 中文!", "line\nbreak\ttab", "\u0000nul", "  two leading spaces" })
            Assert.Equal(text, Tok512.Decode(Tok512.Encode(text, addBos: true)));
    }

    [Theory]
    [InlineData("valid")]
    [InlineData("shakespeare")]
    [InlineData("train")]
    public void Decode_inverts_encode_on_whole_corpora(string corpus)
    {
        string text = File.ReadAllText(corpus switch
        {
            "valid" => Shared.TinyStoriesValid,
            "shakespeare" => Shared.TinyShakespeare,
            _ => Shared.TinyStoriesTrain,
        });
        int[] ids = Tok512.Encode(text, addBos: true);
        Assert.Equal(text, Tok512.Decode(ids));
        Assert.All(ids, id => Assert.InRange(id, 1, Tok512.VocabSize - 1));
    }

    [Fact]
    public void Fast_merge_equals_llama2c_quadratic_merge_on_corpus_text()
    {
        string text = File.ReadAllText(Shared.TinyShakespeare)[..3000] + File.ReadAllText(Shared.TinyStoriesValid)[..3000];
        Assert.Equal(Llama2cOracle.Encode(Tok512, text, addBos: true), Tok512.Encode(text, addBos: true));
    }

    [Fact]
    public void Fast_merge_equals_llama2c_quadratic_merge_on_random_strings()
    {
        // Fragments that merge into long pieces, compete on equal footing, or fall back to bytes;
        // "<0x41>" spells a byte piece literally, and lone surrogates become U+FFFD's bytes.
        string[] fragments =
        [
            "a", "e", "h", "t", "n", "d", "s", "o", " ", "  ", "\n", "\t", ".", ",", "'", "\"", "!",
            "the", "The", " the", "Once", " upon", "time", "Lily", "ing", "and", "happy",
            "é", "😀", "中文", "™", "\u200a", "<0x41>", "<", "0", "x", ">", "\uD800", "\u00A0",
        ];
        var fragment = Gen.Frequency((4, Gen.OneOfConst(fragments)), (1, Gen.Char.Select(c => c.ToString())));
        var texts = fragment.Array[0, 40].Select(parts => string.Concat(parts));
        texts.Sample(text => Assert.Equal(Llama2cOracle.Encode(Tok512, text, addBos: false), Tok512.Encode(text, addBos: false)), iter: 400);
    }

    [Fact]
    public void Piece_by_piece_decode_matches_llama2c()
    {
        Assert.Equal("Once", Tok512.DecodePiece(1, 403));
        Assert.Equal(" upon", Tok512.DecodePiece(403, 407));
        Assert.Equal("\n", Tok512.DecodePiece(403, 13));
        Assert.Equal("", Tok512.DecodePiece(403, 2));
    }

    [Fact]
    public void Truncated_files_fail_with_the_file_name()
    {
        byte[] original = File.ReadAllBytes(Shared.Tok512Bin);
        using var dir = new TempDir();
        // Cut inside the header, inside a score/length pair, inside a piece's bytes.
        foreach (int length in new[] { 2, 4 + 8 + 5 + 3, 4 + 8 + 5 + 8 + 2, original.Length / 2, original.Length - 1 })
        {
            string path = dir[$"tok512-cut{length}.bin"];
            File.WriteAllBytes(path, original[..length]);
            var e = Assert.Throws<InvalidInputException>(() => Llama2cTokenizer.Load(path));
            Assert.Equal(path, e.FilePath);
            Assert.Contains(path, e.Message);
            Assert.Contains("truncated", e.Message);
        }
    }

    [Fact]
    public void Corrupt_or_mismatched_files_fail_clearly()
    {
        byte[] original = File.ReadAllBytes(Shared.Tok512Bin);
        using var dir = new TempDir();

        byte[] badLength = (byte[])original.Clone();
        BitConverter.TryWriteBytes(badLength.AsSpan(4 + 4), 1000); // token 0's length
        File.WriteAllBytes(dir["bad-length.bin"], badLength);
        var e = Assert.Throws<InvalidInputException>(() => Llama2cTokenizer.Load(dir["bad-length.bin"]));
        Assert.Contains("token 0 has length 1000", e.Message);

        byte[] badHeader = (byte[])original.Clone();
        BitConverter.TryWriteBytes(badHeader.AsSpan(0), -5);
        File.WriteAllBytes(dir["bad-header.bin"], badHeader);
        Assert.Contains("max_token_length", Assert.Throws<InvalidInputException>(() => Llama2cTokenizer.Load(dir["bad-header.bin"])).Message);

        // Ends cleanly after 100 tokens: too few for the byte-fallback layout.
        int offset = 4;
        for (int i = 0; i < 100; i++) offset += 8 + BitConverter.ToInt32(original, offset + 4);
        File.WriteAllBytes(dir["short.bin"], original[..offset]);
        Assert.Contains("holds 100 tokens", Assert.Throws<InvalidInputException>(() => Llama2cTokenizer.Load(dir["short.bin"])).Message);

        Assert.Contains("the model expects 1000", Assert.Throws<InvalidInputException>(() => Llama2cTokenizer.Load(Shared.Tok512Bin, expectedVocabSize: 1000)).Message);
        Assert.Contains("bytes after the 300 tokens", Assert.Throws<InvalidInputException>(() => Llama2cTokenizer.Load(Shared.Tok512Bin, expectedVocabSize: 300)).Message);
        Assert.Equal(512, Llama2cTokenizer.Load(Shared.Tok512Bin, expectedVocabSize: 512).VocabSize);

        var missing = Assert.Throws<InvalidInputException>(() => Llama2cTokenizer.Load(dir["absent.bin"]));
        Assert.Equal(dir["absent.bin"], missing.FilePath);
    }
}

/// <summary>
/// llama2.c's encode() transcribed as directly as C# allows: rescan every adjacent pair after each
/// merge, keep the first pair with the strictly highest score. Quadratic, and independent of the
/// tokenizer's own merge code; only the vocabulary is shared.
/// </summary>
static class Llama2cOracle
{
    /// <param name="rightmostOnTies">
    /// Keep the last of equally scored pairs instead of the first: not llama2.c, but what
    /// Microsoft.ML.Tokenizers 2.0.1's SentencePiece BPE does (see SentencePieceTokenizerTests).
    /// </param>
    public static int[] Encode(Llama2cTokenizer t, string text, bool addBos, bool rightmostOnTies = false)
    {
        var lookup = new Dictionary<string, int>();
        for (int id = t.VocabSize - 1; id >= 0; id--) lookup[Key(t.Piece(id))] = id; // lowest id wins duplicates

        var tokens = new List<int>();
        if (addBos) tokens.Add(1);
        byte[] s = Encoding.UTF8.GetBytes(text);
        if (s.Length > 0) tokens.Add(lookup[Key(" "u8)]);

        var buffer = new List<byte>();
        for (int c = 0; c < s.Length; c++)
        {
            if ((s[c] & 0xC0) != 0x80) buffer.Clear();
            buffer.Add(s[c]);
            if (c + 1 < s.Length && (s[c + 1] & 0xC0) == 0x80 && buffer.Count < 4) continue;
            if (lookup.TryGetValue(Key([.. buffer]), out int id)) tokens.Add(id);
            else foreach (byte b in buffer) tokens.Add(b + 3);
            buffer.Clear();
        }

        while (true)
        {
            float bestScore = -1e10f;
            int bestId = -1, bestIdx = -1;
            for (int i = 0; i < tokens.Count - 1; i++)
            {
                string merged = Key(t.Piece(tokens[i])) + Key(t.Piece(tokens[i + 1]));
                if (lookup.TryGetValue(merged, out int id) && (t.Score(id) > bestScore || rightmostOnTies && bestIdx >= 0 && t.Score(id) == bestScore))
                {
                    bestScore = t.Score(id);
                    bestId = id;
                    bestIdx = i;
                }
            }
            if (bestIdx == -1) break;
            tokens[bestIdx] = bestId;
            tokens.RemoveAt(bestIdx + 1);
        }
        return [.. tokens];
    }

    static string Key(ReadOnlySpan<byte> bytes) => Convert.ToHexString(bytes);
}
