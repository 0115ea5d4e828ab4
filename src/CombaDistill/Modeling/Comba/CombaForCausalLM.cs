using CombaDistill.IO;
using CombaDistill.Modeling.Llama;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CombaDistill.Modeling.Comba;

/// <summary>
/// A Comba student: the teacher's <see cref="LlamaForCausalLM"/> tree with each layer's attention replaced by a
/// <see cref="CombaAttention"/> (or kept, for a hybrid). state_dict keys are the teacher's plus the Comba layers' new
/// tensors under <c>self_attn.</c>; with tied embeddings there is no lm_head parameter.
/// A sequence is read with the chunkwise form; decoding continues one token at a time from a
/// <see cref="CombaDecodingState"/>.
/// </summary>
public sealed class CombaForCausalLM : nn.Module<Tensor, Tensor>, ICausalLM
{
    public CombaModel model;
    public Linear? lm_head;

    public CombaForCausalLM(CombaStudentConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null) : base(nameof(CombaForCausalLM))
    {
        StudentConfig = config.Validated();
        model = new CombaModel(config, dtype, device);
        if (!config.Architecture.TieWordEmbeddings)
            lm_head = nn.Linear(config.Architecture.HiddenSize, config.Architecture.VocabSize, hasBias: false, device: device, dtype: dtype);
        RegisterComponents();
    }

    public CombaStudentConfig StudentConfig { get; }

    /// <summary>The teacher's architecture (vocabulary, special ids, context length), as generation and evaluation need it.</summary>
    public LlamaConfig Config => StudentConfig.Architecture;

    ICausalLMConfig ICausalLM.Config => Config;

    public Device Device => model.embed_tokens.weight!.device;

    public override Tensor forward(Tensor inputIds) => forward(inputIds, null);

    /// <summary>Logits (B, T, V) in float32 for ids (B, T); a state is advanced by T.</summary>
    public Tensor forward(Tensor inputIds, CombaDecodingState? state)
    {
        using var scope = NewDisposeScope();
        var hidden = model.forward(inputIds, state);
        var logits = lm_head is null ? nn.functional.linear(hidden, model.embed_tokens.weight!) : lm_head.forward(hidden);
        return logits.to(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    public Tensor Forward(Tensor inputIds, IDecodingState? state = null) => state switch
    {
        null => forward(inputIds, null),
        CombaDecodingState s => forward(inputIds, s),
        _ => throw new ArgumentException($"a Comba student decodes with a {nameof(CombaDecodingState)}, not a {state.GetType().Name}"),
    };

    public IDecodingState NewState(int batch) => NewDecodingState(batch);

    public CombaDecodingState NewDecodingState(int batch) => new(StudentConfig, batch);

    /// <summary>
    /// Loads a student folder written by the converter (or by training): config.json with model_type "comba" plus
    /// model.safetensors or a sharded index. Without <paramref name="dtype"/> the weights keep config.json's
    /// torch_dtype. Every tensor must be present: a student has no initial values to fall back on. Eval mode.
    /// </summary>
    public static CombaForCausalLM FromPretrained(string folder, ScalarType? dtype = null, Device? device = null)
    {
        ModelFolder.Require(folder);
        var configPath = Path.Combine(folder, "config.json");
        var config = CombaStudentConfig.Load(configPath);
        using var checkpoint = Checkpoint.Open(folder);
        LlamaWeightShapes.Check(checkpoint, config.Architecture, configPath, attention: false);   // the mixers' tensors are checked as the model loads
        var model = new CombaForCausalLM(config, dtype ?? LlamaForCausalLM.ParseDtype(config.Architecture.TorchDtype, configPath), device);
        try
        {
            StateDictLoader.Load(model, checkpoint);
        }
        catch
        {
            model.Dispose();
            throw;
        }
        model.eval();
        return model;
    }
}
