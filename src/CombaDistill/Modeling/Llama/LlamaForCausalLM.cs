using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CombaDistill.Modeling.Llama;

/// <summary>
/// The Llama-family teacher: <see cref="LlamaModel"/> plus the classifier. Field names follow Hugging
/// Face, so state_dict keys are exactly the checkpoint's (model.layers.3.self_attn.q_proj.weight).
/// With tied embeddings there is no lm_head parameter: the classifier reuses model.embed_tokens.weight.
/// </summary>
public sealed class LlamaForCausalLM : nn.Module<Tensor, Tensor>, ICausalLM
{
    public LlamaModel model;
    public Linear? lm_head;

    public LlamaForCausalLM(LlamaConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null) : base(nameof(LlamaForCausalLM))
    {
        Config = config;
        model = new LlamaModel(config, dtype, device);
        if (!config.TieWordEmbeddings)
            lm_head = nn.Linear(config.HiddenSize, config.VocabSize, hasBias: false, device: device, dtype: dtype);
        RegisterComponents();
    }

    public LlamaConfig Config { get; }
    public Device Device => model.embed_tokens.weight!.device;

    public override Tensor forward(Tensor inputIds) => forward(inputIds, null);

    /// <summary>Logits (B, T, V) in float32 for ids (B, T); a cache is extended by T.</summary>
    public Tensor forward(Tensor inputIds, KvCache? cache)
    {
        using var scope = NewDisposeScope();
        var hidden = model.forward(inputIds, cache);
        var logits = lm_head is null ? nn.functional.linear(hidden, model.embed_tokens.weight!) : lm_head.forward(hidden);
        return logits.to(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    public Tensor Forward(Tensor inputIds, IDecodingState? state = null) => state switch
    {
        null => forward(inputIds, null),
        KvCache cache => forward(inputIds, cache),
        _ => throw new ArgumentException($"a Llama model decodes with a {nameof(KvCache)}, not a {state.GetType().Name}"),
    };

    public IDecodingState NewState(int batch) => new KvCache(Config.NumHiddenLayers, batch);
}
