using CombaDistill.IO;
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

    public LlamaForCausalLM(LlamaConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null)
        : this(config, dtype, LayerPlacement.OnOneDevice(config.NumHiddenLayers, device ?? CPU))
    {
    }

    /// <summary>A model split by layer over several devices; the head sits with the embeddings on the placement's home.</summary>
    public LlamaForCausalLM(LlamaConfig config, ScalarType dtype, LayerPlacement placement) : base(nameof(LlamaForCausalLM))
    {
        Config = config;
        model = new LlamaModel(config, dtype, placement);
        if (!config.TieWordEmbeddings)
            lm_head = nn.Linear(config.HiddenSize, config.VocabSize, hasBias: false, device: placement.Home, dtype: dtype);
        RegisterComponents();
    }

    public LlamaConfig Config { get; }

    ICausalLMConfig ICausalLM.Config => Config;
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

    /// <summary>
    /// Loads a Hugging Face folder: config.json plus model.safetensors or a sharded index. Without
    /// <paramref name="dtype"/> the weights keep config.json's torch_dtype. The result is in eval mode.
    /// </summary>
    public static LlamaForCausalLM FromPretrained(string folder, ScalarType? dtype = null, Device? device = null) =>
        FromPretrained(folder, dtype, config => LayerPlacement.OnOneDevice(config.NumHiddenLayers, device ?? CPU));

    /// <summary>Loads a folder split by layer: each tensor is read straight onto its device, so no device ever holds the whole model.</summary>
    public static LlamaForCausalLM FromPretrained(string folder, ScalarType? dtype, LayerPlacement placement) =>
        FromPretrained(folder, dtype, _ => placement);

    static LlamaForCausalLM FromPretrained(string folder, ScalarType? dtype, Func<LlamaConfig, LayerPlacement> placement)
    {
        ModelFolder.Require(folder);
        var configPath = Path.Combine(folder, "config.json");
        var config = LlamaConfig.Load(configPath);
        using var checkpoint = Checkpoint.Open(folder);
        LlamaWeightShapes.Check(checkpoint, config, configPath);
        var model = new LlamaForCausalLM(config, dtype ?? ParseDtype(config.TorchDtype, configPath), placement(config));
        try
        {
            // Some exports keep a tied lm_head copy or old rotary tables; neither is a parameter here.
            var notParameters = checkpoint.Names.Where(n => n.EndsWith(".rotary_emb.inv_freq", StringComparison.Ordinal) || (config.TieWordEmbeddings && n == "lm_head.weight"));
            StateDictLoader.Load(model, checkpoint, ignoreUnexpected: notParameters);
        }
        catch
        {
            model.Dispose();
            throw;
        }
        model.eval();
        return model;
    }

    public static ScalarType ParseDtype(string name, string? pathForErrors = null) => name switch
    {
        "float32" or "float" => ScalarType.Float32,
        "bfloat16" => ScalarType.BFloat16,
        "float16" or "half" => ScalarType.Float16,
        "float64" or "double" => ScalarType.Float64,
        _ => throw new InvalidInputException(pathForErrors, $"dtype '{name}' is not one of float32, bfloat16, float16, float64"),
    };
}
