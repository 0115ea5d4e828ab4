using CombaDistill.IO;
using CombaDistill.Modeling.Llama;
using CombaDistill.Tests.Support;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Modeling;

/// <summary>Hugging Face-style folders written by the test (config.json + safetensors, sharded or not) load and compute what the weights say.</summary>
public class FromPretrainedTests
{
    static void WriteFolder(string folder, LlamaConfig config, IEnumerable<(string, Tensor)> tensors, long maxShardBytes)
    {
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "config.json"), config.ToJson().ToJsonString());
        CheckpointWriter.Write(folder, tensors, maxShardBytes, new Dictionary<string, string> { ["format"] = "pt" });
    }

    [Fact]
    public void Sharded_bfloat16_llama3_with_GQA_loads_and_matches_the_reference()
    {
        using var scope = NewDisposeScope();
        using var temp = new TempDir();
        var c = TinyModels.Llama3Gqa with { TorchDtype = "bfloat16" };
        var weights = TinyModels.RandomWeights(c, seed: 31).ToDictionary(kv => kv.Key, kv => kv.Value.to(ScalarType.BFloat16));
        WriteFolder(temp.Path, c, weights.Select(kv => (kv.Key, kv.Value)), maxShardBytes: 16_000);
        using (var checkpoint = Checkpoint.Open(temp.Path)) Assert.True(checkpoint.Files.Count >= 3, "the test should exercise a sharded index");

        var ids = TinyModels.RandomIds(c, 21, seed: 8);
        var expected = LlamaReference.Logits(c, weights, ids);
        using var _ = no_grad();

        using var asStored = LlamaForCausalLM.FromPretrained(temp.Path);
        Assert.All(asStored.parameters(), p => Assert.Equal(ScalarType.BFloat16, p.dtype));
        Assert.False(asStored.training);
        var bf16 = asStored.forward(tensor(ids, [1, ids.Length]))[0];
        // same bound, and the same reasoning, as LlamaForCausalLMTests.Bfloat16_stays_close_to_float32
        var scale = expected.abs().max().item<double>();
        Assert.InRange((bf16.to(ScalarType.Float64) - expected).abs().max().item<double>(), 0, 0.03 * scale);

        using var widened = LlamaForCausalLM.FromPretrained(temp.Path, ScalarType.Float32);
        LlamaForCausalLMTests.AssertClose(widened.forward(tensor(ids, [1, ids.Length]))[0], expected, 1e-5);
    }

    [Fact]
    public void Qwen2_with_biases_and_tied_embeddings_loads_and_matches_the_reference()
    {
        using var scope = NewDisposeScope();
        using var temp = new TempDir();
        var c = TinyModels.Qwen2Tied;
        var weights = TinyModels.RandomWeights(c, seed: 41);
        // Some exporters also store the tied classifier; it must be the embedding and is not a parameter here.
        var stored = weights.Select(kv => (kv.Key, kv.Value)).Append(("lm_head.weight", weights["model.embed_tokens.weight"]));
        WriteFolder(temp.Path, c, stored, maxShardBytes: 1L << 30);
        Assert.True(File.Exists(Path.Combine(temp.Path, "model.safetensors")));

        using var model = LlamaForCausalLM.FromPretrained(temp.Path);
        Assert.True(model.Config is { ModelType: "qwen2", QkvBias: true, OutputBias: false, TieWordEmbeddings: true });
        Assert.Null(model.lm_head);
        Assert.Equal(weights.Keys.Order(), model.state_dict().Keys.Order());
        var ids = TinyModels.RandomIds(c, 15, seed: 2);
        using var _ = no_grad();
        LlamaForCausalLMTests.AssertClose(model.forward(tensor(ids, [1, ids.Length]))[0], LlamaReference.Logits(c, weights, ids), 1e-5);
    }

    [Fact]
    public void A_checkpoint_missing_a_tensor_is_refused_naming_it()
    {
        using var temp = new TempDir();
        var c = TinyModels.LinearRopeWithBias;
        var weights = TinyModels.RandomWeights(c, seed: 1);
        WriteFolder(temp.Path, c, weights.Where(kv => kv.Key != "model.layers.0.self_attn.o_proj.bias").Select(kv => (kv.Key, kv.Value)), 1L << 30);
        var e = Assert.Throws<InvalidInputException>(() => LlamaForCausalLM.FromPretrained(temp.Path));
        Assert.Contains("model.layers.0.self_attn.o_proj.bias", e.Message);
        Assert.Contains(temp.Path, e.Message);
    }
}
