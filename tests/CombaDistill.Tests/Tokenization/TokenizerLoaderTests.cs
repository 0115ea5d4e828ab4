using CombaDistill.IO;
using CombaDistill.Tests.Support;
using CombaDistill.Tokenization;

namespace CombaDistill.Tests.Tokenization;

public class TokenizerLoaderTests
{
    [Fact]
    public void Picks_llama2c_bin_even_when_a_model_file_is_present()
    {
        using var dir = new TempDir();
        File.Copy(Shared.Tok512Bin, dir["tokenizer.bin"]);
        Assert.IsType<Llama2cTokenizer>(TokenizerLoader.Load(dir.Path));

        Llama3TokenizerTests.WriteRanks(dir["tokenizer.model"]);
        var tokenizer = TokenizerLoader.Load(dir.Path);
        Assert.IsType<Llama2cTokenizer>(tokenizer);
        Assert.Equal([1, 403, 407, 261, 378], tokenizer.Encode("Once upon a time", addBos: true));
    }

    [Fact]
    public void Tells_sentencepiece_protobuf_from_tiktoken_text_by_content()
    {
        using var sentencePiece = new TempDir();
        Llama2cTokenizerTests.Tok512.WriteSentencePieceModel(sentencePiece["tokenizer.model"]);
        var sp = Assert.IsType<SentencePieceTokenizer>(TokenizerLoader.Load(sentencePiece.Path));
        Assert.Equal([403, 407, 261, 378], sp.Encode("Once upon a time", addBos: false));

        using var tiktoken = new TempDir();
        Llama3TokenizerTests.WriteRanks(tiktoken["tokenizer.model"]);
        var llama3 = Assert.IsType<Llama3Tokenizer>(TokenizerLoader.Load(tiktoken.Path));
        Assert.Equal(266, llama3.BosId);
    }

    [Fact]
    public void Bos_and_eos_overrides_reach_the_tokenizer()
    {
        using var dir = new TempDir();
        Llama3TokenizerTests.WriteRanks(dir["tokenizer.model"]);
        var tokenizer = TokenizerLoader.Load(dir.Path, eosId: 266 + 9);
        Assert.Equal((266, 275), (tokenizer.BosId, tokenizer.EosId));
    }

    [Fact]
    public void Finds_llama3_original_model_and_takes_special_names_from_tokenizer_config()
    {
        using var dir = new TempDir();
        Directory.CreateDirectory(dir["original"]);
        Llama3TokenizerTests.WriteRanks(Path.Combine(dir["original"], "tokenizer.model"));
        File.WriteAllText(dir["tokenizer_config.json"], """
            {"added_tokens_decoder": {
              "266": {"content": "<|begin_of_text|>", "special": true},
              "267": {"content": "<|end_of_text|>", "special": true},
              "274": {"content": "<|eom_id|>", "special": true},
              "275": {"content": "<|eot_id|>", "special": true}},
             "bos_token": "<|begin_of_text|>"}
            """);
        var tokenizer = Assert.IsType<Llama3Tokenizer>(TokenizerLoader.Load(dir.Path));
        Assert.Equal([266, 274, 'h', 'i', 275], tokenizer.Encode("<|eom_id|>hi<|eot_id|>", addBos: true));
        Assert.Equal(276, tokenizer.VocabSize);

        File.WriteAllText(dir["tokenizer_config.json"], "{\"added_tokens_decoder\": {\"5\": {\"content\": \"<|x|>\"}}}");
        Assert.Contains("which is a BPE rank", Assert.Throws<InvalidInputException>(() => TokenizerLoader.Load(dir.Path)).Message);
        File.WriteAllText(dir["tokenizer_config.json"], "{ not json");
        Assert.Equal(dir["tokenizer_config.json"], Assert.Throws<InvalidInputException>(() => TokenizerLoader.Load(dir.Path)).FilePath);
    }

    [Fact]
    public void A_tokenizer_json_without_a_model_is_reported_with_the_file_and_field()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir["tokenizer.json"], "{}");
        var e = Assert.Throws<InvalidInputException>(() => TokenizerLoader.Load(dir.Path));
        Assert.Equal(dir["tokenizer.json"], e.FilePath);
        Assert.Contains("model: expected an object", e.Message);
    }

    [Fact]
    public void A_folder_without_tokenizer_is_reported()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir["config.json"], "{}");
        var e = Assert.Throws<InvalidInputException>(() => TokenizerLoader.Load(dir.Path));
        Assert.Equal($"no tokenizer found in {dir.Path}: expected tokenizer.json, tokenizer.model or tokenizer.bin", e.Message);
        Assert.Throws<InvalidInputException>(() => TokenizerLoader.Load(dir["missing-folder"]));
    }

    [Fact]
    public void A_truncated_tokenizer_bin_is_reported_with_its_path()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir["tokenizer.bin"], File.ReadAllBytes(Shared.Tok512Bin)[..3001]);
        var e = Assert.Throws<InvalidInputException>(() => TokenizerLoader.Load(dir.Path));
        Assert.Equal(dir["tokenizer.bin"], e.FilePath);
    }
}
