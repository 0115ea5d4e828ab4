using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CombaDistill.Modeling.Llama;

/// <summary>The decoder stack without the classifier: embeddings, layers, final norm.</summary>
public sealed class LlamaModel : nn.Module
{
    readonly RotaryEmbedding rotary;
    public TokenEmbedding embed_tokens;
    public ModuleList<LlamaDecoderLayer> layers;
    public RMSNorm norm;

    public LlamaModel(LlamaConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null)
        : this(config, dtype, LayerPlacement.OnOneDevice(config.NumHiddenLayers, device ?? CPU))
    {
    }

    /// <summary>A model split by layer over several devices (a teacher too large for one).</summary>
    public LlamaModel(LlamaConfig config, ScalarType dtype, LayerPlacement placement) : base(nameof(LlamaModel))
    {
        if (placement.LayerSlots.Count != config.NumHiddenLayers)
            throw new ArgumentException($"the placement has {placement.LayerSlots.Count} layers, the model {config.NumHiddenLayers}", nameof(placement));
        Placement = placement;
        rotary = RotaryEmbedding.For(config);
        embed_tokens = new TokenEmbedding(config.VocabSize, config.HiddenSize, dtype, placement.Home);
        layers = new ModuleList<LlamaDecoderLayer>(Enumerable.Range(0, config.NumHiddenLayers).Select(i => new LlamaDecoderLayer(config, dtype, placement.LayerDevice(i))).ToArray());
        norm = new RMSNorm(config.HiddenSize, config.RmsNormEps, dtype, placement.Home);
        RegisterComponents();
    }

    public LayerPlacement Placement { get; }

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
        var split = Placement.IsSplit;
        for (var i = 0; i < layers.Count; i++)
        {
            if (split)
            {
                // A no-op within a device; a copy where the layers cross to the next one.
                var device = Placement.LayerDevice(i);
                (h, cos, sin) = (h.to(device), cos.to(device), sin.to(device));
            }
            layerInputs?.Add(h);
            h = LayerScope.Run(() => layers[i].forward(h, cos, sin, cache?.Layer(i)));
        }
        return norm.forward(split ? h.to(Placement.Home) : h);
    }
}
