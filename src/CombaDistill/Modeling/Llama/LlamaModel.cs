using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CombaDistill.Modeling.Llama;

/// <summary>The decoder stack without the classifier: embeddings, layers, final norm.</summary>
public sealed class LlamaModel : nn.Module
{
    readonly RotaryEmbedding rotary;
    public Embedding embed_tokens;
    public ModuleList<LlamaDecoderLayer> layers;
    public RMSNorm norm;

    public LlamaModel(LlamaConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null) : base(nameof(LlamaModel))
    {
        rotary = RotaryEmbedding.For(config);
        embed_tokens = nn.Embedding(config.VocabSize, config.HiddenSize, device: device, dtype: dtype);
        layers = new ModuleList<LlamaDecoderLayer>(Enumerable.Range(0, config.NumHiddenLayers).Select(_ => new LlamaDecoderLayer(config, dtype, device)).ToArray());
        norm = new RMSNorm(config.HiddenSize, config.RmsNormEps, dtype, device);
        RegisterComponents();
    }

    public RotaryEmbedding Rotary => rotary;

    /// <summary>
    /// Final-normed hidden states (B, T, hidden) for ids (B, T). <paramref name="layerInputs"/>, when
    /// given, receives the residual stream entering each layer (embeddings first), for distillation.
    /// </summary>
    public Tensor forward(Tensor inputIds, KvCache? cache = null, IList<Tensor>? layerInputs = null)
    {
        if (cache is not null && cache.Batch != inputIds.shape[0])
            throw new ArgumentException($"the cache was made for batch {cache.Batch}, the input has batch {inputIds.shape[0]}");
        var h = embed_tokens.forward(inputIds);
        var (cos, sin) = rotary.CosSin(cache?.Length ?? 0, inputIds.shape[1], h.dtype, h.device);
        for (var i = 0; i < layers.Count; i++)
        {
            layerInputs?.Add(h);
            h = layers[i].forward(h, cos, sin, cache?.Layer(i));
        }
        return norm.forward(h);
    }
}
