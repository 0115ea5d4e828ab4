using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CombaDistill.Modeling.Comba;

/// <summary>The student's decoder stack without the classifier: the teacher's embeddings and final norm around <see cref="CombaDecoderLayer"/>s.</summary>
public sealed class CombaModel : nn.Module
{
    readonly RotaryEmbedding rotary;
    public TokenEmbedding embed_tokens;
    public ModuleList<CombaDecoderLayer> layers;
    public RMSNorm norm;

    public CombaModel(CombaStudentConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null) : base(nameof(CombaModel))
    {
        var architecture = config.Architecture;
        rotary = RotaryEmbedding.For(architecture);
        embed_tokens = new TokenEmbedding(architecture.VocabSize, architecture.HiddenSize, dtype, device);
        layers = new ModuleList<CombaDecoderLayer>(Enumerable.Range(0, config.NumLayers).Select(i => new CombaDecoderLayer(config, i, dtype, device)).ToArray());
        norm = new RMSNorm(architecture.HiddenSize, architecture.RmsNormEps, dtype, device);
        RegisterComponents();
    }

    /// <summary>
    /// Under autograd, recompute each layer's activations in the backward pass instead of keeping them
    /// (<see cref="Ops.ActivationCheckpoint"/>); only the residual stream between layers is kept. Training only.
    /// </summary>
    public bool ActivationCheckpointing { get; set; }

    /// <summary>
    /// Final-normed hidden states (B, T, hidden) for ids (B, T). <paramref name="layerInputs"/>, when given, receives
    /// the residual stream entering each layer (embeddings first), for distillation.
    /// </summary>
    public Tensor forward(Tensor inputIds, CombaDecodingState? state = null, IList<Tensor>? layerInputs = null)
    {
        if (state is not null && state.Batch != inputIds.shape[0])
            throw new ArgumentException($"the decoding state was made for batch {state.Batch}, the input has batch {inputIds.shape[0]}");
        var h = embed_tokens.forward(inputIds);
        // Every layer gets the tables: kept attention always rotates, Comba only with rotary "teacher".
        var (cos, sin) = rotary.CosSin(state?.Length ?? 0, inputIds.shape[1], h.dtype, h.device);
        for (var i = 0; i < layers.Count; i++)
        {
            layerInputs?.Add(h);
            var layer = layers[i];
            h = ActivationCheckpointing && state is null
                ? Ops.ActivationCheckpoint.Run(x => LayerScope.Run(() => layer.forward(x, cos, sin)), h)
                : LayerScope.Run(() => layer.forward(h, cos, sin, state?.Layer(i)));
        }
        state?.Advance(inputIds.shape[1]);
        return norm.forward(h);
    }
}
