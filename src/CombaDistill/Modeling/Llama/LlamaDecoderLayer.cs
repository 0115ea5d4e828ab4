using static TorchSharp.torch;

namespace CombaDistill.Modeling.Llama;

/// <summary>Pre-norm residual block: x + attn(norm x), then + mlp(norm ·).</summary>
public sealed class LlamaDecoderLayer : nn.Module
{
    public RMSNorm input_layernorm, post_attention_layernorm;
    public LlamaAttention self_attn;
    public SwiGLU mlp;

    public LlamaDecoderLayer(LlamaConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null) : base(nameof(LlamaDecoderLayer))
    {
        input_layernorm = new RMSNorm(config.HiddenSize, config.RmsNormEps, dtype, device);
        self_attn = new LlamaAttention(config, dtype, device);
        post_attention_layernorm = new RMSNorm(config.HiddenSize, config.RmsNormEps, dtype, device);
        mlp = new SwiGLU(config.HiddenSize, config.IntermediateSize, dtype, device);
        RegisterComponents();
    }

    public Tensor forward(Tensor x, Tensor cos, Tensor sin, KvCache.LayerCache? cache = null)
    {
        x = x + self_attn.forward(input_layernorm.forward(x), cos, sin, cache);
        return x + mlp.forward(post_attention_layernorm.forward(x));
    }
}
