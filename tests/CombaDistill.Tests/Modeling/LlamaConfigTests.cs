using System.Text.Json.Nodes;
using CombaDistill.IO;
using CombaDistill.Modeling.Llama;

namespace CombaDistill.Tests.Modeling;

public class LlamaConfigTests
{
    /// <summary>Checkpoints saved by transformers (Data/hf/README.md): a GQA Llama 3 in five shards, a Qwen2 with tied embeddings and q/k/v biases.</summary>
    [Theory]
    [InlineData("llama3_gqa_bf16")]
    [InlineData("qwen2_tied")]
    public void Tensors_are_the_names_and_shapes_transformers_saved(string model)
    {
        var folder = Path.Combine(AppContext.BaseDirectory, "Data", "hf", model);
        var config = LlamaConfig.Load(Path.Combine(folder, "config.json"));
        using var checkpoint = Checkpoint.Open(folder);
        var saved = checkpoint.Names.Order(StringComparer.Ordinal).Select(n => (n, checkpoint.Info(n).Shape));
        var listed = config.Tensors().OrderBy(t => t.Name, StringComparer.Ordinal).Select(t => (t.Name, t.Shape));
        Assert.Equal(saved, listed);
    }

    [Theory]
    [InlineData("hidden_size", "64.5", "field 'hidden_size' must be an integer")]
    [InlineData("hidden_size", null, "field 'hidden_size' is missing")]
    [InlineData("rms_norm_eps", "\"small\"", "field 'rms_norm_eps' must be a number")]
    [InlineData("attention_bias", "1", "field 'attention_bias' must be true or false")]
    [InlineData("model_type", "7", "field 'model_type' must be a string")]
    [InlineData("rope_scaling", "5", "field 'rope_scaling' must be an object")]
    [InlineData("rope_scaling", "{\"rope_type\": \"linear\", \"factor\": \"x\"}", "field 'rope_scaling.factor' must be a number")]
    [InlineData("rope_scaling", "{\"rope_type\": \"linear\", \"factor\": null}", "field 'rope_scaling.factor' is missing")]
    [InlineData("eos_token_id", "[1, 2.5]", "field 'eos_token_id' must be a token id or a non-empty list of token ids")]
    public void A_malformed_field_is_named_with_the_file(string field, string? json, string problem)
    {
        var j = new JsonObject { ["model_type"] = "llama", ["hidden_size"] = 64, ["num_attention_heads"] = 4, ["intermediate_size"] = 128,
            ["num_hidden_layers"] = 2, ["vocab_size"] = 256 };
        j[field] = json is null ? null : JsonNode.Parse(json);
        if (json is null) j.Remove(field);
        var error = Assert.Throws<InvalidInputException>(() => LlamaConfig.FromJson(j, "m/config.json"));
        Assert.Equal($"m/config.json: {problem}", error.Message);
        // as read from a file: an integer is a number, and a whole number written with a point is an integer
        var read = LlamaConfig.FromJson(JsonNode.Parse("""
            {"model_type": "llama", "hidden_size": 64.0, "num_attention_heads": 4, "intermediate_size": 128, "num_hidden_layers": 2,
             "vocab_size": 256, "max_position_embeddings": 4096.0, "rope_theta": 64}
            """)!.AsObject(), "f");
        Assert.Equal((64, 4096, 64.0), (read.HiddenSize, read.MaxPositionEmbeddings, read.RopeTheta));
    }

    [Fact]
    public void Null_reads_as_missing_and_fields_nobody_reads_are_ignored()
    {
        var read = LlamaConfig.FromJson(JsonNode.Parse("""
            {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": null, "intermediate_size": 128,
             "num_hidden_layers": 2, "vocab_size": 256, "rms_norm_eps": null, "eos_token_id": null, "pad_token_id": "\ud800", "transformers_version": "5.0"}
            """)!.AsObject(), "f");
        var defaults = new LlamaConfig();
        Assert.Equal((4, 16), (read.NumKeyValueHeads, read.HeadDim));
        Assert.Equal(defaults.RmsNormEps, read.RmsNormEps);
        Assert.Equal(defaults.EosTokenIds, read.EosTokenIds);
    }
}
