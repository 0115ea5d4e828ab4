using System.Text.Json;
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

    public static LlamaConfig FromJson(JsonObject j, string path)
    {
        var modelType = Str(j, path, "model_type") ?? throw new InvalidInputException(path, "field 'model_type' is missing");
        if (!SupportedModelTypes.Contains(modelType))
            throw new InvalidInputException(path, $"field 'model_type' is '{modelType}'; supported: {string.Join(", ", SupportedModelTypes)}");
        var hidden = Int(j, path, "hidden_size", required: true)!.Value;
        var heads = Int(j, path, "num_attention_heads", required: true)!.Value;
        var kvHeads = Int(j, path, "num_key_value_heads") ?? heads;
        if (heads <= 0 || kvHeads <= 0 || heads % kvHeads != 0)
            throw new InvalidInputException(path, $"fields 'num_attention_heads' ({heads}) and 'num_key_value_heads' ({kvHeads}) are inconsistent: the first must be a positive multiple of the second");
        var headDim = Int(j, path, "head_dim") ?? (hidden % heads == 0 ? hidden / heads
            : throw new InvalidInputException(path, $"field 'hidden_size' ({hidden}) is not divisible by 'num_attention_heads' ({heads}) and 'head_dim' is not given"));
        var act = Str(j, path, "hidden_act") ?? "silu";
        if (act != "silu")
            throw new InvalidInputException(path, $"field 'hidden_act' is '{act}'; only 'silu' (SwiGLU) is supported");
        if (modelType == "qwen2" && Bool(j, path, "use_sliding_window") == true)
            throw new InvalidInputException(path, "field 'use_sliding_window' is true; sliding-window attention is not supported");
        if (j["layer_types"] is { } layerTypesNode && layerTypesNode is not JsonArray)
            throw new InvalidInputException(path, "field 'layer_types' must be an array of strings");
        // Mistral's window applies to every layer; a model mixing full and sliding layers is not supported.
        int? slidingWindow = modelType == "mistral" ? Int(j, path, "sliding_window") : null;
        if (slidingWindow is <= 0) throw new InvalidInputException(path, $"field 'sliding_window' is {slidingWindow}; it must be positive or null");
        var allowedLayerType = slidingWindow is null ? "full_attention" : "sliding_attention";
        if (j["layer_types"] is JsonArray layerTypes && layerTypes.Any(t => !(t is JsonValue v && v.TryGetValue<string>(out var type) && type == allowedLayerType)))
            throw new InvalidInputException(path, $"field 'layer_types' names layers other than '{allowedLayerType}'; attention that differs between layers is not supported");
        var attentionBias = Bool(j, path, "attention_bias") ?? false;
        // transformers ≥ 5 writes rope_theta and the scaling together as 'rope_parameters'; earlier versions
        // write 'rope_theta' and 'rope_scaling'. Read either.
        var ropeParameters = j["rope_parameters"] as JsonObject;
        var ropeTheta = Num(j, path, "rope_theta") ?? (ropeParameters is null ? null : Num(ropeParameters, path, "rope_theta")) ?? 10000.0;
        var ropeScaling = j["rope_scaling"] is not null ? ParseRopeScaling(j["rope_scaling"], path, "rope_scaling")
            : ParseRopeScaling(ropeParameters, path, "rope_parameters");
        return new LlamaConfig
        {
            ModelType = modelType,
            VocabSize = Int(j, path, "vocab_size", required: true)!.Value,
            HiddenSize = hidden,
            IntermediateSize = Int(j, path, "intermediate_size", required: true)!.Value,
            NumHiddenLayers = Int(j, path, "num_hidden_layers", required: true)!.Value,
            NumAttentionHeads = heads,
            NumKeyValueHeads = kvHeads,
            HeadDim = headDim,
            MaxPositionEmbeddings = Int(j, path, "max_position_embeddings") ?? 2048,
            RmsNormEps = Num(j, path, "rms_norm_eps") ?? 1e-6,
            RopeTheta = ropeTheta,
            RopeScaling = ropeScaling,
            TieWordEmbeddings = Bool(j, path, "tie_word_embeddings") ?? false,
            QkvBias = modelType == "qwen2" || attentionBias,
            OutputBias = modelType != "qwen2" && attentionBias,
            TorchDtype = Str(j, path, "torch_dtype") ?? Str(j, path, "dtype") ?? "float32",
            SlidingWindow = slidingWindow,
            BosTokenId = Int(j, path, "bos_token_id") ?? 1,
            EosTokenIds = EosIds(j, path),
        }.Validated(path);
    }

    /// <summary>Upper bounds well above any released model, so a corrupt config.json is refused before anything is allocated.</summary>
    public const int MaxVocabSize = 1 << 24, MaxHiddenSize = 1 << 17, MaxIntermediateSize = 1 << 20, MaxLayers = 1024, MaxHeads = 1024,
        MaxHeadDim = 4096, MaxPositions = 1 << 24;

    /// <summary>Range checks of a config read from a file: sizes positive and bounded, rope and eps meaningful, token ids in the vocabulary.</summary>
    public LlamaConfig Validated(string path)
    {
        void Range(string field, long value, long max)
        {
            if (value < 1 || value > max) throw new InvalidInputException(path, $"field '{field}' is {value}; expected 1 to {max:N0}");
        }
        Range("vocab_size", VocabSize, MaxVocabSize);
        Range("hidden_size", HiddenSize, MaxHiddenSize);
        Range("intermediate_size", IntermediateSize, MaxIntermediateSize);
        Range("num_hidden_layers", NumHiddenLayers, MaxLayers);
        Range("num_attention_heads", NumAttentionHeads, MaxHeads);
        Range("num_key_value_heads", NumKeyValueHeads, MaxHeads);
        Range("head_dim", HeadDim, MaxHeadDim);
        if (HeadDim % 2 != 0) throw new InvalidInputException(path, $"field 'head_dim' is {HeadDim}; rotary embeddings need an even head dimension");
        Range("max_position_embeddings", MaxPositionEmbeddings, MaxPositions);
        if (!(RmsNormEps > 0 && RmsNormEps < 1)) throw new InvalidInputException(path, $"field 'rms_norm_eps' is {RmsNormEps}; expected a number above 0 and below 1");
        if (!(RopeTheta > 0 && double.IsFinite(RopeTheta))) throw new InvalidInputException(path, $"field 'rope_theta' is {RopeTheta}; expected a positive number");
        if (RopeScaling is { } r)
        {
            if (!(r.Factor > 0 && double.IsFinite(r.Factor))) throw new InvalidInputException(path, $"field 'rope_scaling.factor' is {r.Factor}; expected a positive number");
            if (r.Type == "llama3")
            {
                if (!(r.LowFreqFactor > 0 && r.HighFreqFactor > r.LowFreqFactor && double.IsFinite(r.HighFreqFactor)))
                    throw new InvalidInputException(path, $"fields 'rope_scaling.low_freq_factor' ({r.LowFreqFactor}) and 'high_freq_factor' ({r.HighFreqFactor}) must be positive, the second above the first");
                Range("rope_scaling.original_max_position_embeddings", r.OriginalMaxPositionEmbeddings, MaxPositions);
            }
        }
        if (BosTokenId < 0 || BosTokenId >= VocabSize)
            throw new InvalidInputException(path, $"field 'bos_token_id' is {BosTokenId}; expected a token id from 0 to {VocabSize - 1} (vocab_size {VocabSize})");
        if (EosTokenIds.Length == 0) throw new InvalidInputException(path, "field 'eos_token_id' is an empty list");
        foreach (var eos in EosTokenIds)
            if (eos < 0 || eos >= VocabSize)
                throw new InvalidInputException(path, $"field 'eos_token_id' holds {eos}; expected token ids from 0 to {VocabSize - 1} (vocab_size {VocabSize})");
        return this;
    }

    static int[] EosIds(JsonObject j, string path)
    {
        const string Problem = "field 'eos_token_id' must be a token id or a non-empty list of token ids";
        static int? Id(JsonNode? n) => n is JsonValue v && v.TryGetValue<int>(out var i) ? i
            : n is JsonValue d && d.TryGetValue<double>(out var x) && x == Math.Floor(x) && Math.Abs(x) < int.MaxValue ? (int)x : null;
        return j["eos_token_id"] switch
        {
            null => [2],
            JsonArray { Count: > 0 } a => a.Select(n => Id(n) ?? throw new InvalidInputException(path, Problem)).ToArray(),
            var n => Id(n) is { } id ? [id] : throw new InvalidInputException(path, Problem),
        };
    }

    static RopeScaling? ParseRopeScaling(JsonNode? node, string path, string field)
    {
        if (node is null) return null;
        if (node is not JsonObject o) throw new InvalidInputException(path, $"field '{field}' must be an object or null");
        var type = Str(o, path, "rope_type") ?? Str(o, path, "type")
            ?? throw new InvalidInputException(path, $"field '{field}.rope_type' is missing");
        if (type == "default") return null;
        if (type is not ("llama3" or "linear"))
            throw new InvalidInputException(path, $"field '{field}.rope_type' is '{type}'; supported: llama3, linear");
        var factor = Num(o, path, "factor") ?? throw new InvalidInputException(path, $"field '{field}.factor' is missing");
        if (type == "llama3")
        {
            return new RopeScaling(type, factor,
                Num(o, path, "low_freq_factor") ?? throw new InvalidInputException(path, $"field '{field}.low_freq_factor' is missing"),
                Num(o, path, "high_freq_factor") ?? throw new InvalidInputException(path, $"field '{field}.high_freq_factor' is missing"),
                Int(o, path, "original_max_position_embeddings") ?? throw new InvalidInputException(path, $"field '{field}.original_max_position_embeddings' is missing"));
        }
        return new RopeScaling(type, factor);
    }

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

    static string? Str(JsonObject j, string path, string field) => JsonFields.String(j, path, field);
    static int? Int(JsonObject j, string path, string field, bool required = false) => JsonFields.Int32(j, path, field, required);
    static double? Num(JsonObject j, string path, string field) => JsonFields.Number(j, path, field);
    static bool? Bool(JsonObject j, string path, string field) => JsonFields.Bool(j, path, field);
}
