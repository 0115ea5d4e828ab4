using System.Text;
using CombaDistill.Tests.Support;
using CombaDistill.Tokenization;
using CsCheck;

namespace CombaDistill.Tests.Tokenization;

public class StreamingDecoderTests
{
    static readonly Llama2cTokenizer Tok512 = Llama2cTokenizerTests.Tok512;

    static string Stream(ITokenizer tokenizer, IEnumerable<int> ids, int previousId = -1)
    {
        var decoder = new StreamingDecoder(tokenizer, previousId);
        var text = new StringBuilder();
        foreach (int id in ids) text.Append(decoder.Append(id));
        return text.Append(decoder.Flush()).ToString();
    }

    [Fact]
    public void Holds_back_a_character_until_its_last_byte_arrives()
    {
        var decoder = new StreamingDecoder(Tok512);
        Assert.Equal("", decoder.Append(Tok512.BosId));
        Assert.Equal("Once", decoder.Append(403));
        Assert.Equal("", decoder.Append(0xE4 + 3));
        Assert.Equal("", decoder.Append(0xB8 + 3));
        Assert.Equal("中", decoder.Append(0xAD + 3));
        Assert.Equal(" upon", decoder.Append(407));
        Assert.Equal("", decoder.Append(0xC3 + 3));
        Assert.Equal("\uFFFD", decoder.Flush()); // generation stopped mid-character
    }

    [Fact]
    public void Continuation_after_a_prompt_keeps_its_leading_space()
    {
        Assert.Equal(" upon a time", Stream(Tok512, [407, 261, 378], previousId: 403));
        Assert.Equal("upon a time", Stream(Tok512, [407, 261, 378]));
    }

    [Fact]
    public void Equals_full_decode_on_corpus_text_with_multibyte_characters()
    {
        string text = File.ReadAllText(Shared.TinyStoriesValid)[..5000] + " Café 😀 中文 ™ — done";
        int[] ids = Tok512.Encode(text, addBos: true);
        Assert.Equal(text, Stream(Tok512, ids));
    }

    [Fact]
    public void Equals_full_decode_on_random_ids_including_broken_utf8()
    {
        // Byte pieces (3..258) are over-weighted so that partial and invalid sequences are common.
        var id = Gen.Frequency((3, Gen.Int[3, 258]), (2, Gen.Int[0, Tok512.VocabSize - 1]), (1, Gen.Int[0xC0 + 3, 0xF7 + 3]));
        id.Array[0, 30].Sample(ids => Assert.Equal(Tok512.Decode(ids), Stream(Tok512, ids)), iter: 500);
    }

    /// <summary>Hides <see cref="IByteTokenizer"/> so the decoder must fall back to re-decoding.</summary>
    sealed class TextOnly(ITokenizer inner) : ITokenizer
    {
        public int VocabSize => inner.VocabSize;
        public int BosId => inner.BosId;
        public int EosId => inner.EosId;
        public string Description => inner.Description;
        public int[] Encode(string text, bool addBos) => inner.Encode(text, addBos);
        public string Decode(IReadOnlyList<int> ids) => inner.Decode(ids);
    }

    [Fact]
    public void Works_for_tokenizers_without_byte_access()
    {
        var textOnly = new TextOnly(Tok512);
        string text = "Lily saw 中文 and 😀.";
        int[] ids = Tok512.Encode(text, addBos: true);
        Assert.Equal(text, Stream(textOnly, ids));
        Assert.Equal(" upon a time", Stream(textOnly, [407, 261, 378], previousId: 403));

        var decoder = new StreamingDecoder(textOnly);
        Assert.Equal("", decoder.Append(0xE4 + 3));
        Assert.Equal("", decoder.Append(0xB8 + 3));
        Assert.Equal("中", decoder.Append(0xAD + 3));
    }
}
