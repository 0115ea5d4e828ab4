using CombaDistill.IO;
using CombaDistill.Tests.Support;
using CombaDistill.Tokenization;

namespace CombaDistill.Tests.Tokenization;

public class Llama2cTokenizerTests
{
    static readonly Llama2cTokenizer Tok512 = Llama2cTokenizer.Load(Shared.Tok512Bin);

    [Fact]
    public void Loads_tok512_with_its_documented_layout()
    {
        Assert.Equal(512, Tok512.VocabSize);
        Assert.Equal(7, Tok512.MaxTokenLength);
        Assert.Equal((1, 2), (Tok512.BosId, Tok512.EosId));
        Assert.Equal("\n<s>\n"u8.ToArray(), Tok512.Piece(1).ToArray());
        Assert.Equal(" t"u8.ToArray(), Tok512.Piece(259).ToArray());
        Assert.Equal(-1f, Tok512.Score(260));
    }

    [Fact]
    public void Encodes_llama2c_reference_vector()
    {
        Assert.Equal([403, 407, 261, 378], Tok512.Encode("Once upon a time", addBos: false));
        Assert.Equal([1, 403, 407, 261, 378], Tok512.Encode("Once upon a time", addBos: true));
        Assert.Equal("Once upon a time", Tok512.Decode([1, 403, 407, 261, 378]));
        Assert.Equal("Once upon a time", Tok512.Decode([403, 407, 261, 378]));
    }
}
