using CombaDistill.Conversion;
using CombaDistill.IO;
using CombaDistill.Modeling;
using CombaDistill.Modeling.Llama;
using CombaDistill.Tests.Support;
using CombaDistill.Tokenization;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Modeling;

/// <summary>stories260K imported once into a temporary folder and loaded back, shared by the tests below.</summary>
public sealed class ImportedStories260K : IDisposable
{
    readonly TempDir temp = new();
    public string Folder { get; }
    public LlamaForCausalLM Model { get; }
    public ITokenizer Tokenizer { get; }

    public ImportedStories260K()
    {
        Folder = temp["stories260K"];
        Llama2cImporter.Import(Shared.Stories260KBin, Shared.Tok512Bin, Folder, force: false);
        Model = LlamaForCausalLM.FromPretrained(Folder, device: CPU);
        Tokenizer = TokenizerLoader.Load(Folder);
    }

    public void Dispose()
    {
        Model.Dispose();
        temp.Dispose();
    }
}

/// <summary>The reference values of shared/models/stories260K/SOURCE.md, reproduced through import, load and generation.</summary>
public class Stories260KTests(ImportedStories260K stories) : IClassFixture<ImportedStories260K>
{
    /// <summary>llama2.c's test vector (test_all.py): run -t 0.0 -n 200 from BOS, without run.c's final newline.</summary>
    internal const string GreedyReference =
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.\n" +
        "Lily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't know what to do. She said, \"I want to play with your ball, but I can't find it.\"\n" +
        "Lily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what to do.\"\n" +
        "Lily didn't want to help her mom, so she";

    [Fact]
    public void Greedy_generation_from_BOS_reproduces_llama2c_byte_for_byte()
    {
        var tokens = Generation.Generate(stories.Model, [1], new GenerationOptions(MaxTokens: 200, Temperature: 0), TestContext.Current.CancellationToken).ToList();
        Assert.Equal(200, tokens.Count);
        var decoder = new StreamingDecoder(stories.Tokenizer, previousId: 1);
        var text = string.Concat(tokens.Select(decoder.Append)) + decoder.Flush();
        Assert.Equal(464, System.Text.Encoding.UTF8.GetByteCount(text));
        Assert.Equal(GreedyReference, text);
    }

    [Fact]
    public void Logits_after_BOS_match_the_reference()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var logits = stories.Model.forward(tensor(new long[] { 1 }, [1, 1]))[0, 0];
        var values = logits.data<float>().ToArray();
        var top5 = values.Select((v, i) => (v, i)).OrderByDescending(p => p.v).Take(5).ToArray();
        Assert.Equal([403, 385, 410, 317, 407], top5.Select(p => p.i));
        double[] expectedTop = [17.0235, 15.4062, 13.1083, 12.7692, 12.4181];
        for (var k = 0; k < 5; k++) Assert.Equal(expectedTop[k], top5[k].v, 0.00005 + 1e-6);
        double[] expectedFirst = [-6.22291, 8.40434, -6.22374, -6.22254];
        for (var k = 0; k < 4; k++) Assert.Equal(expectedFirst[k], values[k], 0.000005 + 1e-6);
    }

    static long[] ValidationTokens(ITokenizer tokenizer)
    {
        // The file's start is plenty: 4 KB of text is well over 512 tokens.
        var text = File.ReadAllText(Shared.TinyStoriesValid)[..4096];
        var ids = tokenizer.Encode(text, addBos: true);
        Assert.True(ids.Length >= 512);
        return ids.Take(512).Select(i => (long)i).ToArray();
    }

    static double MeanNll(Tensor logits, long[] ids) =>
        -logits[0, ..^1].to(ScalarType.Float64).log_softmax(-1).gather(1, tensor(ids[1..]).unsqueeze(1)).mean().item<double>();

    [Fact]
    public void Validation_loss_on_512_tokens_is_1_3112_nats_with_and_without_the_cache()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var ids = ValidationTokens(stories.Tokenizer);
        var full = stories.Model.forward(tensor(ids, [1, 512]));
        Assert.Equal(1.3112, MeanNll(full, ids), 0.001);

        using var cache = (KvCache)stories.Model.NewState(1);
        var stepwise = cat(ids.Select(id => stories.Model.forward(tensor(new[] { id }, [1, 1]), cache)).ToArray(), 1);
        Assert.Equal(512, cache.Length);
        LlamaForCausalLMTests.AssertClose(stepwise, full, 1e-5);
        Assert.Equal(MeanNll(full, ids), MeanNll(stepwise, ids), 1e-6);
    }

    [Fact]
    public void Model_state_dict_keys_equal_the_imported_checkpoint_names()
    {
        using var checkpoint = Checkpoint.Open(stories.Folder);
        Assert.Equal(checkpoint.Names.Order(StringComparer.Ordinal), stories.Model.state_dict().Keys.Order(StringComparer.Ordinal));
        Assert.DoesNotContain("lm_head.weight", checkpoint.Names);   // shared classifier ⇒ tied
        Assert.Equal(260_032, stories.Model.parameters().Sum(p => p.numel()));
    }
}
