using System.Text.Json.Nodes;
using CombaDistill.IO;
using CombaDistill.Modeling.Llama;

namespace CombaDistill.Tests.Modeling;

public class SlidingWindowConfigTests
{
    static JsonObject Config(string modelType, string extra = "") => JsonNode.Parse($$"""
        {"model_type": "{{modelType}}", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
         "num_attention_heads": 2 {{extra}}}
        """)!.AsObject();

    [Fact]
    public void Mistral_reads_and_writes_its_window_and_other_families_have_none()
    {
        var mistral = LlamaConfig.FromJson(Config("mistral", ", \"sliding_window\": 4096"), "config.json");
        Assert.Equal(4096, mistral.SlidingWindow);
        Assert.Equal(4096, LlamaConfig.FromJson(mistral.ToJson(), "again").SlidingWindow);
        Assert.Null(LlamaConfig.FromJson(Config("mistral", ", \"sliding_window\": null"), "config.json").SlidingWindow);
        // transformers 5 may list every layer as sliding.
        Assert.Equal(8, LlamaConfig.FromJson(Config("mistral", ", \"sliding_window\": 8, \"layer_types\": [\"sliding_attention\", \"sliding_attention\"]"), "c").SlidingWindow);
        // Qwen2 writes sliding_window but uses it only with use_sliding_window.
        Assert.Null(LlamaConfig.FromJson(Config("qwen2", ", \"sliding_window\": 4096, \"use_sliding_window\": false"), "config.json").SlidingWindow);
    }

    [Theory]
    [InlineData(", \"sliding_window\": 0", "field 'sliding_window' is 0")]
    [InlineData(", \"sliding_window\": 8, \"layer_types\": [\"sliding_attention\", \"full_attention\"]", "field 'layer_types' names layers other than 'sliding_attention'")]
    [InlineData(", \"layer_types\": [\"sliding_attention\", \"sliding_attention\"]", "field 'layer_types' names layers other than 'full_attention'")]
    public void Windows_that_cannot_be_honoured_are_refused_naming_the_field(string extra, string message)
    {
        var e = Assert.Throws<InvalidInputException>(() => LlamaConfig.FromJson(Config("mistral", extra), "config.json"));
        Assert.Contains(message, e.Message);
    }
}
