using System.Text.Json.Nodes;
using CombaDistill.IO;

namespace CombaDistill.Modeling.Llama;

/// <summary>RoPE frequency scaling as Hugging Face spells it in <c>rope_scaling</c>.</summary>
public sealed record RopeScaling(
    string Type,                      // "llama3" | "linear"
    double Factor,
    double LowFreqFactor = 1.0,
    double HighFreqFactor = 4.0,
    int OriginalMaxPositionEmbeddings = 8192);

/// <summary>
/// A Llama-family architecture (llama, mistral, qwen2) as read from a Hugging Face config.json.
/// Defaults are Hugging Face's LlamaConfig defaults.
/// </summary>
public sealed record LlamaConfig : ICausalLMConfig
{
    public static readonly string[] SupportedModelTypes = ["llama", "mistral", "qwen2"];

    public string ModelType { get; init; } = "llama";
    public int VocabSize { get; init; } = 32000;
    public int HiddenSize { get; init; } = 4096;
    public int IntermediateSize { get; init; } = 11008;
    public int NumHiddenLayers { get; init; } = 32;
    public int NumAttentionHeads { get; init; } = 32;
    public int NumKeyValueHeads { get; init; } = 32;
    public int HeadDim { get; init; } = 128;
    public int MaxPositionEmbeddings { get; init; } = 2048;
    public double RmsNormEps { get; init; } = 1e-6;
    public double RopeTheta { get; init; } = 10000.0;
    public RopeScaling? RopeScaling { get; init; }
    public bool TieWordEmbeddings { get; init; }
    /// <summary>Biases on q/k/v (always for qwen2; <c>attention_bias</c> for llama, which also puts one on o).</summary>
    public bool QkvBias { get; init; }
    public bool OutputBias { get; init; }
    public string TorchDtype { get; init; } = "float32";
    public int BosTokenId { get; init; } = 1;
    public int[] EosTokenIds { get; init; } = [2];
    /// <summary>Mistral's <c>sliding_window</c>: each position attends to itself and the window - 1 positions before it; null for full attention.</summary>
    public int? SlidingWindow { get; init; }

    public int KvGroups => NumAttentionHeads / NumKeyValueHeads;

    /// <summary>Reads and validates config.json; every error names the file and the field.</summary>
    public static LlamaConfig Load(string path) => InputFile.ReadJsonObject(path, "config.json", root => FromJson(root, path));

    /// <summary>Binds a config.json object (<see cref="HuggingFaceConfigJson"/>), validates it, and maps it onto the architecture.</summary>
    public static LlamaConfig FromJson(JsonObject j, string path) =>
        JsonConfig.Bind<HuggingFaceConfigJson>(j, path, JsonConfig.SnakeCase).Validate(path).ToConfig();

    /// <summary>Upper bounds well above any released model, so a corrupt config.json is refused before anything is allocated.</summary>
    public const int MaxVocabSize = 1 << 24, MaxHiddenSize = 1 << 17, MaxIntermediateSize = 1 << 20, MaxLayers = 1024, MaxHeads = 1024,
        MaxHeadDim = 4096, MaxPositions = 1 << 24;

    /// <summary>
    /// The checkpoint's tensors, names and shapes in state_dict order, read off the model built on the meta device
    /// (shapes without storage, so a 70B config costs nothing).
    /// </summary>
    public IReadOnlyList<(string Name, long[] Shape)> Tensors()
    {
        using var meta = new LlamaForCausalLM(this, TorchSharp.torch.ScalarType.Float32, TorchSharp.torch.META);
        return meta.state_dict().Select(e => (e.Key, e.Value.shape)).ToList();
    }

    /// <summary>The Hugging Face config.json for this architecture (fields other code may add to).</summary>
    public JsonObject ToJson()
    {
        var j = new JsonObject
        {
            ["architectures"] = new JsonArray(ModelType switch { "qwen2" => "Qwen2ForCausalLM", "mistral" => "MistralForCausalLM", _ => "LlamaForCausalLM" }),
            ["model_type"] = ModelType,
            ["vocab_size"] = VocabSize,
            ["hidden_size"] = HiddenSize,
            ["intermediate_size"] = IntermediateSize,
            ["num_hidden_layers"] = NumHiddenLayers,
            ["num_attention_heads"] = NumAttentionHeads,
            ["num_key_value_heads"] = NumKeyValueHeads,
            ["head_dim"] = HeadDim,
            ["max_position_embeddings"] = MaxPositionEmbeddings,
            ["rms_norm_eps"] = RmsNormEps,
            ["rope_theta"] = RopeTheta,
            ["hidden_act"] = "silu",
            ["tie_word_embeddings"] = TieWordEmbeddings,
            ["torch_dtype"] = TorchDtype,
            ["bos_token_id"] = BosTokenId,
            ["eos_token_id"] = EosTokenIds.Length == 1 ? EosTokenIds[0] : new JsonArray(EosTokenIds.Select(e => (JsonNode)e).ToArray()),
        };
        if (ModelType != "qwen2") j["attention_bias"] = QkvBias;
        if (ModelType == "mistral") j["sliding_window"] = SlidingWindow;
        j["rope_scaling"] = RopeScaling is null ? null : RopeScaling.Type == "llama3"
            ? new JsonObject
            {
                ["rope_type"] = "llama3", ["factor"] = RopeScaling.Factor, ["low_freq_factor"] = RopeScaling.LowFreqFactor,
                ["high_freq_factor"] = RopeScaling.HighFreqFactor, ["original_max_position_embeddings"] = RopeScaling.OriginalMaxPositionEmbeddings,
            }
            : new JsonObject { ["rope_type"] = RopeScaling.Type, ["factor"] = RopeScaling.Factor };
        return j;
    }
}
