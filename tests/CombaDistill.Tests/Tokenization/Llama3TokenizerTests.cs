using System.Text;
using CombaDistill.IO;
using CombaDistill.Tests.Support;
using CombaDistill.Tokenization;

namespace CombaDistill.Tests.Tokenization;

/// <summary>
/// A tiny tiktoken vocabulary in Llama 3's file format: the 256 single bytes (rank = byte value)
/// plus a few merges, so every expected id below can be worked out by hand.
/// </summary>
public sealed class Llama3TokenizerTests : IDisposable
{
    static readonly string[] Merges = [" t", "he", " the", "34", "n'", "'t", "\n\n", "ll", "hell", "hello"];
    const int The = 258, ThirtyFour = 259, ApostropheT = 261, TwoNewlines = 262, Hello = 265;
    const int Ranks = 256 + 10; // special tokens start here

    readonly TempDir dir = new();
    readonly Llama3Tokenizer tok;

    public Llama3TokenizerTests()
    {
        WriteRanks(dir["tokenizer.model"]);
        tok = Llama3Tokenizer.Load(dir["tokenizer.model"]);
    }

    public void Dispose() => dir.Dispose();

    internal static void WriteRanks(string path)
    {
        var lines = new StringBuilder();
        for (int b = 0; b < 256; b++) lines.Append($"{Convert.ToBase64String([(byte)b])} {b}\n");
        for (int i = 0; i < Merges.Length; i++) lines.Append($"{Convert.ToBase64String(Encoding.UTF8.GetBytes(Merges[i]))} {256 + i}\n");
        File.WriteAllText(path, lines.ToString());
    }

    static int[] Bytes(string s) => [.. Encoding.UTF8.GetBytes(s).Select(b => (int)b)];

    [Fact]
    public void Special_tokens_follow_the_ranks()
    {
        Assert.Equal(Ranks + 256, tok.VocabSize);
        Assert.Equal(Ranks, tok.RankCount);
        Assert.Equal((Ranks, Ranks + 1), (tok.BosId, tok.EosId));
        var special = tok.SpecialTokens;
        Assert.Equal(256, special.Count);
        Assert.Equal(Ranks + 2, special["<|reserved_special_token_0|>"]);
        Assert.Equal(Ranks + 6, special["<|start_header_id|>"]);
        Assert.Equal(Ranks + 7, special["<|end_header_id|>"]);
        Assert.Equal(Ranks + 8, special["<|reserved_special_token_4|>"]);
        Assert.Equal(Ranks + 9, special["<|eot_id|>"]);
        Assert.Equal(Ranks + 10, special["<|reserved_special_token_5|>"]);
        Assert.Equal(Ranks + 255, special["<|reserved_special_token_250|>"]);
        // With the real 128000 ranks this gives Llama 3's ids.
        Assert.Equal(128009, Llama3Tokenizer.DefaultSpecialTokens(128000)["<|eot_id|>"]);
    }

    [Fact]
    public void Merges_by_rank_within_pre_tokenizer_pieces()
    {
        Assert.Equal([(int)'i', 'n', The], tok.Encode("in the", addBos: false));
        Assert.Equal([(int)'t', 257], tok.Encode("the", addBos: false));
        Assert.Equal([Hello, .. Bytes(" world")], tok.Encode("hello world", addBos: false));
        Assert.Equal([ThirtyFour], tok.Encode("34", addBos: false));
    }

    [Fact]
    public void Pre_tokenizer_splits_digits_contractions_and_newlines_like_llama3()
    {
        // Digits go in groups of three ("123", "45"), so "34" never merges across the split.
        Assert.Equal(Bytes("12345"), tok.Encode("12345", addBos: false));
        // "'t" is its own piece, so "n'" cannot merge; the contraction match ignores case.
        Assert.Equal([(int)'d', 'o', 'n', ApostropheT], tok.Encode("don't", addBos: false));
        Assert.Equal(Bytes("DON'T"), tok.Encode("DON'T", addBos: false));
        Assert.Equal([(int)'a', TwoNewlines, 'b'], tok.Encode("a\n\nb", addBos: false));
        // Without the split, "n'" (rank 260) would beat "'t" (rank 261).
        Assert.Equal([(int)'x', 'n', ApostropheT], tok.Encode("xn't", addBos: false));
    }

    [Fact]
    public void Special_tokens_in_text_and_bos_are_single_ids_and_decode_to_nothing()
    {
        Assert.Equal([Ranks, 'h', 'i', Ranks + 9], tok.Encode("<|begin_of_text|>hi<|eot_id|>", addBos: false));
        Assert.Equal([Ranks, Hello], tok.Encode("hello", addBos: true));
        Assert.Empty(tok.Encode("", addBos: false));
        Assert.Equal("hello", tok.Decode([Ranks, Hello, Ranks + 9, Ranks + 1]));
    }

    [Fact]
    public void Byte_level_round_trip_and_streaming()
    {
        foreach (string text in new[] { "Café 😀 中文", " leading space", "a  b\r\n\tc", "it's 2024!!" })
        {
            int[] ids = tok.Encode(text, addBos: true);
            Assert.Equal(text, tok.Decode(ids));
            var decoder = new StreamingDecoder(tok);
            Assert.Equal(text, string.Concat(ids.Select(decoder.Append)) + decoder.Flush());
        }
        Assert.Equal([0xC3, 0xA9], tok.Encode("é", addBos: false));
    }

    [Fact]
    public void Overrides_for_special_tokens_and_ids()
    {
        var llama31 = new Dictionary<string, int> { ["<|begin_of_text|>"] = Ranks, ["<|end_of_text|>"] = Ranks + 1, ["<|eom_id|>"] = Ranks + 8, ["<|eot_id|>"] = Ranks + 9 };
        var custom = Llama3Tokenizer.Load(dir["tokenizer.model"], llama31, eosId: Ranks + 9);
        Assert.Equal(Ranks + 9, custom.EosId);
        Assert.Equal(Ranks + 10, custom.VocabSize);
        Assert.Equal([Ranks + 8], custom.Encode("<|eom_id|>", addBos: false));
    }

    [Fact]
    public void Malformed_rank_files_fail_with_file_and_line()
    {
        File.WriteAllText(dir["bad.model"], "IQ== 0\nnot-a-rank-line\n");
        var e = Assert.Throws<InvalidInputException>(() => Llama3Tokenizer.Load(dir["bad.model"]));
        Assert.Equal(dir["bad.model"], e.FilePath);
        Assert.Contains("line 2", e.Message);

        File.WriteAllText(dir["dup.model"], "IQ== 0\nIg== 0\n");
        Assert.Contains("rank 0 appears twice", Assert.Throws<InvalidInputException>(() => Llama3Tokenizer.Load(dir["dup.model"])).Message);

        File.WriteAllText(dir["gap.model"], "IQ== 0\nIg== 2\n");
        Assert.Contains("not 0..1", Assert.Throws<InvalidInputException>(() => Llama3Tokenizer.Load(dir["gap.model"])).Message);
    }

    [Fact]
    public void A_vocabulary_without_every_single_byte_is_refused_at_load_not_at_the_first_unknown_byte()
    {
        var path = dir["small.model"];
        var lines = new StringBuilder();
        for (int b = 0; b < 200; b++) lines.Append($"{Convert.ToBase64String([(byte)b])} {b}\n");   // no token for 0xC8 and above
        File.WriteAllText(path, lines.ToString());
        var error = Assert.Throws<InvalidInputException>(() => Llama3Tokenizer.Load(path));
        Assert.Contains("no token for the single byte 0xC8", error.Message);
    }
}
