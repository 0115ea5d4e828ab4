using CombaDistill.Modeling.Llama;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Modeling;

/// <summary>Small architectures that exercise every option, and seeded random weights for them.</summary>
static class TinyModels
{
    /// <summary>GQA (6 query heads over 2 KV heads) with Llama 3.1 rope scaling whose three bands all occur at head_dim 8.</summary>
    public static LlamaConfig Llama3Gqa => new()
    {
        ModelType = "llama", VocabSize = 97, HiddenSize = 48, IntermediateSize = 80, NumHiddenLayers = 2,
        NumAttentionHeads = 6, NumKeyValueHeads = 2, HeadDim = 8, MaxPositionEmbeddings = 128, RmsNormEps = 1e-5,
        RopeTheta = 500000, RopeScaling = new RopeScaling("llama3", 8, 1, 4, 256), BosTokenId = 1, EosTokenIds = [2],
    };

    /// <summary>Qwen2: q/k/v biases, tied embeddings, head_dim (16) larger than hidden/heads (8).</summary>
    public static LlamaConfig Qwen2Tied => new()
    {
        ModelType = "qwen2", VocabSize = 89, HiddenSize = 32, IntermediateSize = 72, NumHiddenLayers = 2,
        NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 16, MaxPositionEmbeddings = 128, RmsNormEps = 1e-6,
        RopeTheta = 1000000, TieWordEmbeddings = true, QkvBias = true, BosTokenId = 1, EosTokenIds = [2, 3],
    };

    /// <summary>Mistral: GQA with a sliding window of 5 positions, shorter than the test sequences.</summary>
    public static LlamaConfig MistralWindow => new()
    {
        ModelType = "mistral", VocabSize = 83, HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 2,
        NumAttentionHeads = 4, NumKeyValueHeads = 1, HeadDim = 8, MaxPositionEmbeddings = 128, RmsNormEps = 1e-5,
        RopeTheta = 10000, SlidingWindow = 5, BosTokenId = 1, EosTokenIds = [2],
    };

    /// <summary>Plain multi-head attention with linear position interpolation and an o_proj bias (llama attention_bias).</summary>
    public static LlamaConfig LinearRopeWithBias => new()
    {
        ModelType = "llama", VocabSize = 61, HiddenSize = 32, IntermediateSize = 48, NumHiddenLayers = 1,
        NumAttentionHeads = 4, NumKeyValueHeads = 4, HeadDim = 8, MaxPositionEmbeddings = 64, RmsNormEps = 1e-5,
        RopeTheta = 10000, RopeScaling = new RopeScaling("linear", 4), QkvBias = true, OutputBias = true,
    };

    /// <summary>Every tensor a Hugging Face checkpoint of this architecture holds, filled from a seeded generator.</summary>
    public static Dictionary<string, Tensor> RandomWeights(LlamaConfig c, ulong seed)
    {
        var g = new Generator(seed);
        Tensor Matrix(long rows, long cols) => randn([rows, cols], generator: g) / Math.Sqrt(cols);
        Tensor Norm(long n) => 1 + 0.2 * randn([n], generator: g);
        Tensor Bias(long n) => 0.1 * randn([n], generator: g);
        var (q, kv) = (c.NumAttentionHeads * c.HeadDim, c.NumKeyValueHeads * c.HeadDim);
        var w = new Dictionary<string, Tensor> { ["model.embed_tokens.weight"] = randn([c.VocabSize, c.HiddenSize], generator: g) };
        for (var l = 0; l < c.NumHiddenLayers; l++)
        {
            var p = $"model.layers.{l}.";
            w[p + "input_layernorm.weight"] = Norm(c.HiddenSize);
            w[p + "self_attn.q_proj.weight"] = Matrix(q, c.HiddenSize);
            w[p + "self_attn.k_proj.weight"] = Matrix(kv, c.HiddenSize);
            w[p + "self_attn.v_proj.weight"] = Matrix(kv, c.HiddenSize);
            w[p + "self_attn.o_proj.weight"] = Matrix(c.HiddenSize, q);
            if (c.QkvBias)
            {
                w[p + "self_attn.q_proj.bias"] = Bias(q);
                w[p + "self_attn.k_proj.bias"] = Bias(kv);
                w[p + "self_attn.v_proj.bias"] = Bias(kv);
            }
            if (c.OutputBias) w[p + "self_attn.o_proj.bias"] = Bias(c.HiddenSize);
            w[p + "post_attention_layernorm.weight"] = Norm(c.HiddenSize);
            w[p + "mlp.gate_proj.weight"] = Matrix(c.IntermediateSize, c.HiddenSize);
            w[p + "mlp.up_proj.weight"] = Matrix(c.IntermediateSize, c.HiddenSize);
            w[p + "mlp.down_proj.weight"] = Matrix(c.HiddenSize, c.IntermediateSize);
        }
        w["model.norm.weight"] = Norm(c.HiddenSize);
        if (!c.TieWordEmbeddings) w["lm_head.weight"] = Matrix(c.VocabSize, c.HiddenSize);
        return w;
    }

    /// <summary>A model holding exactly <paramref name="weights"/> (strict: every key must match).</summary>
    public static LlamaForCausalLM Build(LlamaConfig c, Dictionary<string, Tensor> weights, ScalarType dtype = ScalarType.Float32)
    {
        var model = new LlamaForCausalLM(c, dtype);
        model.load_state_dict(weights, strict: true);
        model.eval();
        return model;
    }

    public static long[] RandomIds(LlamaConfig c, int length, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, length).Select(_ => (long)random.Next(c.VocabSize)).ToArray();
    }
}
