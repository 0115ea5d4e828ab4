using CombaDistill.IO;
using CombaDistill.Modeling.Llama;
using CombaDistill.Tests.Support;
using CombaDistill.Tokenization;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Modeling;

/// <summary>The random-weight Llama folders benchmarks use where no checkpoint can be downloaded.</summary>
public sealed class SyntheticLlamaTests
{
    [Fact]
    public void A_synthetic_folder_loads_with_a_tokenizer_of_exactly_its_vocabulary()
    {
        using var dir = new TempDir();
        var config = new LlamaConfig
        {
            ModelType = "llama", VocabSize = 256 + 128 * 256 + 256, HiddenSize = 64, IntermediateSize = 96, NumHiddenLayers = 2, NumAttentionHeads = 4,
            NumKeyValueHeads = 2, HeadDim = 16, MaxPositionEmbeddings = 256, RmsNormEps = 1e-5, TieWordEmbeddings = true, TorchDtype = "bfloat16",
        };
        SyntheticLlama.Write(dir["m"], config, seed: 3, cancellationToken: TestContext.Current.CancellationToken);

        var tokenizer = TokenizerLoader.Load(dir["m"]);
        // the 256 bytes, every pair whose first byte is ASCII, then the 256 special tokens
        Assert.Equal(33280, tokenizer.VocabSize);
        Assert.Equal(33024, tokenizer.BosId);
        var text = File.ReadAllText(Shared.TinyStoriesValid)[..3000];
        var ids = tokenizer.Encode(text, addBos: false);
        Assert.Equal(text, tokenizer.Decode(ids));
        Assert.InRange(ids.Length, text.Length / 2, text.Length * 2 / 3);     // ASCII merges into pairs

        using var model = LlamaForCausalLM.FromPretrained(dir["m"]);
        Assert.Equal(33024, model.Config.BosTokenId);
        Assert.Equal(ScalarType.BFloat16, model.model.embed_tokens.weight!.dtype);
        Assert.True(model.model.layers[1].input_layernorm.weight.to(ScalarType.Float32).eq(1).all().item<bool>());
        var q = model.model.layers[0].self_attn.q_proj.weight!.to(ScalarType.Float64);
        Assert.Equal(0.02, q.std().item<double>(), 0.002);
        using var logits = model.forward(tensor(ids.Take(16).Select(i => (long)i).ToArray(), [1, 16]));
        Assert.Equal([1L, 16, 33280], logits.shape);
        Assert.True(logits.isfinite().all().item<bool>());
    }

    [Fact]
    public void The_ranks_are_pairs_then_triples_each_mergeable_from_earlier_ones()
    {
        var lines = SyntheticLlama.TiktokenRanks(256 + 65536 + 2).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(256 + 65536 + 2, lines.Length);
        Assert.Equal($"{Convert.ToBase64String([0x41])} 65", lines[65]);
        Assert.Equal($"{Convert.ToBase64String([0x01, 0x02])} {256 + 258}", lines[256 + 258]);
        Assert.Equal($"{Convert.ToBase64String([0, 0, 1])} {256 + 65536 + 1}", lines[^1]);
        Assert.Throws<ArgumentException>(() => SyntheticLlama.Write("unused", new LlamaConfig { VocabSize = 500 }, 0, cancellationToken: TestContext.Current.CancellationToken));
    }
}
