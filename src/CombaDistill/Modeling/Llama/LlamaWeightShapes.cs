using CombaDistill.IO;

namespace CombaDistill.Modeling.Llama;

/// <summary>
/// The tensors a Llama-family config.json implies, checked against a checkpoint's headers before any model is built:
/// a config that disagrees with its weights (3,000 layers over a 2-layer checkpoint, a hidden size of 2^31) fails
/// here, naming the tensor, instead of after gigabytes have been allocated for a model that can never load.
/// </summary>
public static class LlamaWeightShapes
{
    /// <summary>Name and shape of every tensor <paramref name="config"/> needs; the attention projections only with <paramref name="attention"/>.</summary>
    public static IEnumerable<(string Name, long[] Shape)> Expected(LlamaConfig config, bool attention = true)
    {
        long h = config.HiddenSize, v = config.VocabSize, i = config.IntermediateSize;
        long q = (long)config.NumAttentionHeads * config.HeadDim, kv = (long)config.NumKeyValueHeads * config.HeadDim;
        yield return ("model.embed_tokens.weight", [v, h]);
        for (var layer = 0; layer < config.NumHiddenLayers; layer++)
        {
            var p = $"model.layers.{layer}.";
            yield return (p + "input_layernorm.weight", [h]);
            yield return (p + "post_attention_layernorm.weight", [h]);
            yield return (p + "mlp.gate_proj.weight", [i, h]);
            yield return (p + "mlp.up_proj.weight", [i, h]);
            yield return (p + "mlp.down_proj.weight", [h, i]);
            if (!attention) continue;
            yield return (p + "self_attn.q_proj.weight", [q, h]);
            yield return (p + "self_attn.k_proj.weight", [kv, h]);
            yield return (p + "self_attn.v_proj.weight", [kv, h]);
            yield return (p + "self_attn.o_proj.weight", [h, q]);
        }
        yield return ("model.norm.weight", [h]);
        if (!config.TieWordEmbeddings) yield return ("lm_head.weight", [v, h]);
    }

    /// <summary>Throws an <see cref="InvalidInputException"/> naming the first tensors that are missing or shaped otherwise than <paramref name="configPath"/> says.</summary>
    public static void Check(Checkpoint checkpoint, LlamaConfig config, string configPath, bool attention = true)
    {
        var problems = new List<string>();
        var missing = 0;
        foreach (var (name, shape) in Expected(config, attention))
        {
            if (!checkpoint.Contains(name))
            {
                if (missing++ < 3) problems.Add($"tensor '{name}' is missing");
            }
            else if (checkpoint.Info(name).Shape is var actual && !actual.SequenceEqual(shape))
                problems.Add($"tensor '{name}' has shape {Bounded.Shape(actual)}, but config.json implies {Bounded.Shape(shape)}");
            if (problems.Count >= 3) break;
        }
        if (problems.Count > 0)
            throw new InvalidInputException(checkpoint.Path, $"does not match {configPath}: {string.Join("; ", problems)}");
    }
}
