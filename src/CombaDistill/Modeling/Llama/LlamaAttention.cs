using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CombaDistill.Modeling.Llama;

/// <summary>
/// Causal multi-head attention with grouped K/V heads (GQA) and rotary positions, laid out like
/// Hugging Face's LlamaAttention / Qwen2Attention so its parameters carry the same names. With a sliding
/// window W (Mistral), position i attends to positions i - W + 1 … i only; the cache still keeps every key.
/// </summary>
public sealed class LlamaAttention : nn.Module
{
    readonly int numHeads, numKeyValueHeads, headDim;
    readonly int? slidingWindow;
    public Linear q_proj, k_proj, v_proj, o_proj;

    public LlamaAttention(LlamaConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null) : base(nameof(LlamaAttention))
    {
        (numHeads, numKeyValueHeads, headDim) = (config.NumAttentionHeads, config.NumKeyValueHeads, config.HeadDim);
        slidingWindow = config.SlidingWindow;
        q_proj = nn.Linear(config.HiddenSize, numHeads * headDim, hasBias: config.QkvBias, device: device, dtype: dtype);
        k_proj = nn.Linear(config.HiddenSize, numKeyValueHeads * headDim, hasBias: config.QkvBias, device: device, dtype: dtype);
        v_proj = nn.Linear(config.HiddenSize, numKeyValueHeads * headDim, hasBias: config.QkvBias, device: device, dtype: dtype);
        o_proj = nn.Linear(numHeads * headDim, config.HiddenSize, hasBias: config.OutputBias, device: device, dtype: dtype);
        RegisterComponents();
    }

    /// <summary>
    /// x (B, T, hidden) at positions given by the rotary tables cos/sin (T, head_dim); with a cache
    /// the keys attend over everything it holds as well.
    /// </summary>
    public Tensor forward(Tensor x, Tensor cos, Tensor sin, KvCache.LayerCache? cache = null)
    {
        var (batch, length) = (x.shape[0], x.shape[1]);
        // Projections run through call, not forward, so forward hooks apply (that is how LoRA adapters attach).
        var q = q_proj.call(x).view(batch, length, numHeads, headDim).transpose(1, 2);
        var k = k_proj.call(x).view(batch, length, numKeyValueHeads, headDim).transpose(1, 2);
        var v = v_proj.call(x).view(batch, length, numKeyValueHeads, headDim).transpose(1, 2);
        q = RotaryEmbedding.Apply(q, cos, sin);
        k = RotaryEmbedding.Apply(k, cos, sin);
        if (cache is not null) (k, v) = cache.Append(k, v);

        // Each K/V head serves numHeads / numKeyValueHeads consecutive query heads.
        var groups = numHeads / numKeyValueHeads;
        if (groups > 1) (k, v) = (k.repeat_interleave(groups, dim: 1), v.repeat_interleave(groups, dim: 1));

        var keyLength = k.shape[2];
        var windowed = slidingWindow is { } window && keyLength > window;
        var attended =
            windowed ? nn.functional.scaled_dot_product_attention(q, k, v, attn_mask: Mask(length, keyLength, slidingWindow, x.device))
            : length == keyLength ? nn.functional.scaled_dot_product_attention(q, k, v, is_casual: true)
            : length == 1 ? nn.functional.scaled_dot_product_attention(q, k, v)
            : nn.functional.scaled_dot_product_attention(q, k, v, attn_mask: Mask(length, keyLength, null, x.device));
        return o_proj.call(attended.transpose(1, 2).reshape(batch, length, numHeads * headDim));
    }

    /// <summary>
    /// The last <paramref name="queries"/> of <paramref name="keys"/> positions each see themselves and everything
    /// before, or, with a <paramref name="window"/>, themselves and the window - 1 positions before (true = attend).
    /// </summary>
    public static Tensor Mask(long queries, long keys, int? window, Device device)
    {
        var causal = ones([queries, keys], ScalarType.Bool, device).tril(keys - queries);
        if (window is not { } w) return causal;
        using (causal) return causal.triu(keys - queries - w + 1);
    }
}
