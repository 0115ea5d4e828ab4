using CombaDistill.Modeling.Llama;
using static TorchSharp.torch;

namespace CombaDistill.Modeling.Comba;

/// <summary>
/// The teacher's pre-norm residual block with its token mixer swapped: x + mix(norm x), then + mlp(norm ·), where
/// mix is a <see cref="CombaAttention"/>, or the teacher's <see cref="LlamaAttention"/> in a layer kept as attention.
/// Both mixers carry q/k/v/o_proj under <c>self_attn.</c>, so the keys are the teacher's.
/// </summary>
public sealed class CombaDecoderLayer : nn.Module
{
    public RMSNorm input_layernorm, post_attention_layernorm;
    public nn.Module self_attn;
    public SwiGLU mlp;

    public CombaDecoderLayer(CombaStudentConfig config, int index, ScalarType dtype = ScalarType.Float32, Device? device = null) : base(nameof(CombaDecoderLayer))
    {
        var architecture = config.Architecture;
        input_layernorm = new RMSNorm(architecture.HiddenSize, architecture.RmsNormEps, dtype, device);
        self_attn = config.IsAttentionLayer(index)
            ? new LlamaAttention(architecture, dtype, device)
            : new CombaAttention("self_attn", architecture, config.Comba, device, dtype);
        post_attention_layernorm = new RMSNorm(architecture.HiddenSize, architecture.RmsNormEps, dtype, device);
        mlp = new SwiGLU(architecture.HiddenSize, architecture.IntermediateSize, dtype, device);
        RegisterComponents();
    }

    public bool IsAttention => self_attn is LlamaAttention;

    /// <param name="x">(B, T, hidden)</param>
    /// <param name="cos">rotary tables (T, head_dim) for these positions: used by kept attention, and by Comba with rotary "teacher"</param>
    /// <param name="sin">as <paramref name="cos"/></param>
    /// <param name="state">this layer's decoding state, advanced by T; null for a stateless forward</param>
    public Tensor forward(Tensor x, Tensor cos, Tensor sin, CombaDecodingState.LayerState? state = null)
    {
        var normed = input_layernorm.forward(x);
        Tensor mixed;
        if (self_attn is CombaAttention comba)
        {
            (mixed, var next) = comba.forward(normed, cos, sin, state?.Recurrent);
            if (state is not null) state.Replace(next);
        }
        else
        {
            mixed = ((LlamaAttention)self_attn).forward(normed, cos, sin, state?.Cache);
        }
        x = x + mixed;
        return x + mlp.forward(post_attention_layernorm.forward(x));
    }
}
