using CombaDistill.Tests.Support;
using CombaDistill.Tokenization;

namespace CombaDistill.Tests.Tokenization;

public class SentencePieceTokenizerTests
{
    static readonly Llama2cTokenizer Tok512 = Llama2cTokenizer.Load(Shared.Tok512Bin);

    static string Head(string path, int chars) => File.ReadAllText(path)[..chars];

    [Theory]
    [InlineData("valid")]
    [InlineData("shakespeare")]
    public void Written_model_encodes_like_llama2c(string corpus)
    {
        string text = Head(corpus == "valid" ? Shared.TinyStoriesValid : Shared.TinyShakespeare, 20_000);
        using var dir = new TempDir();
        Tok512.WriteSentencePieceModel(dir["tokenizer.model"]);
        var sp = SentencePieceTokenizer.Load(dir["tokenizer.model"]);

        int[] expected = Tok512.Encode(text, addBos: true);
        int[] actual = sp.Encode(text, addBos: true);
        int firstDiff = Enumerable.Range(0, Math.Min(expected.Length, actual.Length)).FirstOrDefault(i => expected[i] != actual[i], -1);
        Assert.True(firstDiff < 0 && expected.Length == actual.Length,
            $"first difference at {firstDiff}: llama2c {string.Join(",", expected.Skip(Math.Max(0, firstDiff - 3)).Take(8))} sp {string.Join(",", actual.Skip(Math.Max(0, firstDiff - 3)).Take(8))}; lengths {expected.Length} {actual.Length}");
        Assert.Equal(text, sp.Decode(actual));
    }
}
