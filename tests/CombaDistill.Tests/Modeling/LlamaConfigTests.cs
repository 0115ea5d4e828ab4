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
}
