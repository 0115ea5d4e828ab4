using System.Text;
using CombaDistill.IO;
using CombaDistill.Tests.Support;
using CombaDistill.Tokenization;
using CsCheck;

namespace CombaDistill.Tests.Tokenization;

/// <summary>tok512 written as a SentencePiece tokenizer.model, read back through Microsoft.ML.Tokenizers.</summary>
public sealed class SentencePieceTokenizerTests : IDisposable
{
    static readonly Llama2cTokenizer Tok512 = Llama2cTokenizerTests.Tok512;
    readonly TempDir dir = new();
    readonly SentencePieceTokenizer sp;

    public SentencePieceTokenizerTests()
    {
        Tok512.WriteSentencePieceModel(dir["tokenizer.model"]);
        sp = SentencePieceTokenizer.Load(dir["tokenizer.model"]);
    }

    public void Dispose() => dir.Dispose();

    [Fact]
    public void Written_model_has_the_same_vocabulary_and_special_ids()
    {
        Assert.Equal(512, sp.VocabSize);
        Assert.Equal((1, 2), (sp.BosId, sp.EosId));
        Assert.Contains("SentencePiece", sp.Description);
        Assert.Empty(Directory.GetFiles(dir.Path, "*.tmp"));
        // Every piece decodes to the bytes llama2.c prints for it (not at the start of a text).
        for (int id = 3; id < 512; id++)
            Assert.Equal(Tok512.TokenBytes(403, id), sp.TokenBytes(403, id));
    }

    [Fact]
    public void Encodes_the_llama2c_reference_vector()
    {
        Assert.Equal([403, 407, 261, 378], sp.Encode("Once upon a time", addBos: false));
        Assert.Equal([1, 403, 407, 261, 378], sp.Encode("Once upon a time", addBos: true));
        Assert.Equal("Once upon a time", sp.Decode([1, 403, 407, 261, 378, 2]));
    }

    [Theory]
    [InlineData("valid")]
    [InlineData("shakespeare")]
    public void Encodes_like_llama2c_on_the_first_20000_characters(string corpus)
    {
        string text = File.ReadAllText(corpus == "valid" ? Shared.TinyStoriesValid : Shared.TinyShakespeare)[..20_000];
        int[] expected = Tok512.Encode(text, addBos: true);
        int[] actual = sp.Encode(text, addBos: true);
        Assert.Equal(expected, actual);
        Assert.Equal(text, sp.Decode(actual));
    }

    [Fact]
    public void Falls_back_to_bytes_like_llama2c()
    {
        foreach (string text in new[] { "é", "😀", "中文", "Café 😀 中文 ™!", "tab\tand\nnewline", "  spaces  " })
        {
            Assert.Equal(Tok512.Encode(text, addBos: false), sp.Encode(text, addBos: false));
            Assert.Equal(text, sp.Decode(sp.Encode(text, addBos: true)));
        }
    }

    /// <summary>
    /// The one known difference: when overlapping pairs would merge into equally scored pieces
    /// (a run like "ooo", "...", three spaces), llama2.c and Google's sentencepiece merge the
    /// leftmost pair first, Microsoft.ML.Tokenizers 2.0.1 the rightmost. Everything else agrees,
    /// so its output is exactly llama2.c's algorithm with ties going right.
    /// </summary>
    [Fact]
    public void Differs_from_llama2c_only_in_how_equal_overlapping_merges_are_ordered()
    {
        const int O = 414, OO = 347, Comma = 432;
        Assert.Equal([Comma, OO, O], Tok512.Encode(",ooo", addBos: false)[1..]);
        Assert.Equal([Comma, O, OO], sp.Encode(",ooo", addBos: false)[1..]);

        string[] fragments =
        [
            "a", "e", "h", "t", "n", "d", "s", "o", "oo", " ", "  ", "\n", "\t", ".", "..", ",", "'", "\"", "!",
            "the", "The", " the", "Once", " upon", "time", "Lily", "ing", "and", "happy",
            "é", "😀", "中文", "™", "\u200a", "<", "0", "x", ">", "\u00A0",
        ];
        var texts = Gen.OneOfConst(fragments).Array[0, 40].Select(parts => string.Concat(parts));
        texts.Sample(text => Assert.Equal(Llama2cOracle.Encode(Tok512, text, addBos: false, rightmostOnTies: true), sp.Encode(text, addBos: false)), iter: 400);
    }

    /// <summary>
    /// Google's own encoder (Debian's <c>sentencepiece</c> package) on the written file: it must
    /// reproduce llama2.c's ids, ties included. spm_encode encodes each line as a sentence.
    /// </summary>
    [Fact]
    public async Task Google_sentencepiece_encodes_the_written_model_like_llama2c()
    {
        const string spmEncode = "/usr/bin/spm_encode";
        Assert.SkipUnless(File.Exists(spmEncode), "spm_encode is not installed (apt-get install sentencepiece)");
        string[] lines =
        [
            .. File.ReadAllText(Shared.TinyStoriesValid)[..20_000].Split('\n'),
            .. File.ReadAllText(Shared.TinyShakespeare)[..20_000].Split('\n'),
            ",ooo", "Hello...  world!!!   x", "Grüße 😀 中文 ™ é", "  two leading spaces",
        ];
        lines = [.. lines.Where(line => line.Length > 0)];
        var run = new System.Diagnostics.ProcessStartInfo(spmEncode, ["--model", dir["tokenizer.model"], "--output_format", "id"])
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            StandardInputEncoding = new UTF8Encoding(false),
            StandardOutputEncoding = Encoding.UTF8,
        };
        using var process = System.Diagnostics.Process.Start(run)!;
        var output = process.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        process.StandardInput.Write(string.Join("\n", lines) + "\n");
        process.StandardInput.Close();
        string[] google = (await output).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        await process.WaitForExitAsync(TestContext.Current.CancellationToken);
        Assert.Equal(lines.Length, google.Length);
        for (int i = 0; i < lines.Length; i++)
            Assert.Equal(string.Join(" ", Tok512.Encode(lines[i], addBos: false)), google[i]);
    }

    [Fact]
    public void Streaming_decode_equals_full_decode()
    {
        string text = "Lily found a shiny 中文 coin 😀.\nThe end.";
        int[] ids = sp.Encode(text, addBos: true);
        var decoder = new StreamingDecoder(sp);
        var streamed = new StringBuilder();
        foreach (int id in ids) streamed.Append(decoder.Append(id));
        streamed.Append(decoder.Flush());
        Assert.Equal(text, streamed.ToString());
    }

    [Fact]
    public void Bos_and_eos_can_be_overridden()
    {
        var overridden = SentencePieceTokenizer.Load(dir["tokenizer.model"], bosId: 2, eosId: 1);
        Assert.Equal((2, 1), (overridden.BosId, overridden.EosId));
        Assert.Equal(2, overridden.Encode("Once", addBos: true)[0]);
        Assert.Throws<InvalidInputException>(() => SentencePieceTokenizer.Load(dir["tokenizer.model"], bosId: 512));
    }

    [Fact]
    public void Garbage_files_fail_with_the_file_name()
    {
        File.WriteAllBytes(dir["garbage.model"], [0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 1, 2, 3]);
        var e = Assert.Throws<InvalidInputException>(() => SentencePieceTokenizer.Load(dir["garbage.model"]));
        Assert.Equal(dir["garbage.model"], e.FilePath);
    }
}
