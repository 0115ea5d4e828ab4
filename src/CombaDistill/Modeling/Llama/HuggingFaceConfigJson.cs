using System.Text.Json;
using System.Text.Json.Serialization;
using CombaDistill.IO;

namespace CombaDistill.Modeling.Llama;

/// <summary>
/// A Hugging Face config.json of a llama, mistral or qwen2 model as the file spells it, bound by
/// <see cref="JsonConfig"/>: the fields this project reads, each null (or its default) when the file leaves it out.
/// <see cref="Validate"/> is the one check of all of it; <see cref="ToConfig"/> then maps it onto a
/// <see cref="LlamaConfig"/>, whose initialisers hold the defaults.
/// </summary>
sealed record HuggingFaceConfigJson
{
    static readonly LlamaConfig Defaults = new();

    public string? ModelType { get; init; }
    public int? VocabSize { get; init; }
    public int? HiddenSize { get; init; }
    public int? IntermediateSize { get; init; }
    public int? NumHiddenLayers { get; init; }
    public int? NumAttentionHeads { get; init; }
    /// <summary>Absent: one KV head per attention head.</summary>
    public int? NumKeyValueHeads { get; init; }
    /// <summary>Absent: hidden_size / num_attention_heads.</summary>
    public int? HeadDim { get; init; }
    public int MaxPositionEmbeddings { get; init; } = Defaults.MaxPositionEmbeddings;
    public double RmsNormEps { get; init; } = Defaults.RmsNormEps;
    public string HiddenAct { get; init; } = "silu";
    public bool TieWordEmbeddings { get; init; } = Defaults.TieWordEmbeddings;
    /// <summary>Llama's biases on q, k, v and o (qwen2 always has them on q, k and v).</summary>
    public bool AttentionBias { get; init; }
    /// <summary>transformers ≥ 5 writes <c>dtype</c>, earlier versions <c>torch_dtype</c>.</summary>
    public string? TorchDtype { get; init; }
    public string? Dtype { get; init; }
    public int BosTokenId { get; init; } = Defaults.BosTokenId;
    [JsonConverter(typeof(TokenIdsConverter))]
    public int[] EosTokenId { get; init; } = Defaults.EosTokenIds;

    // transformers ≥ 5 writes rope_theta and the scaling together as 'rope_parameters'; earlier versions write
    // 'rope_theta' and 'rope_scaling'. Either is read.
    public double? RopeTheta { get; init; }
    public RopeJson? RopeScaling { get; init; }
    public RopeJson? RopeParameters { get; init; }

    /// <summary>Mistral's window over every layer; qwen2 writes one too but uses it only with use_sliding_window.</summary>
    public int? SlidingWindow { get; init; }
    public bool UseSlidingWindow { get; init; }
    /// <summary>transformers 5 may list each layer's attention; a non-string entry reads as null.</summary>
    [JsonConverter(typeof(LayerTypesConverter))]
    public string?[]? LayerTypes { get; init; }

    /// <summary><c>rope_scaling</c>, or the scaling part of <c>rope_parameters</c>.</summary>
    public sealed record RopeJson
    {
        public string? RopeType { get; init; }
        /// <summary>The older spelling of rope_type.</summary>
        public string? Type { get; init; }
        public double? Factor { get; init; }
        public double? LowFreqFactor { get; init; }
        public double? HighFreqFactor { get; init; }
        public int? OriginalMaxPositionEmbeddings { get; init; }
        public double? RopeTheta { get; init; }
    }

    int KeyValueHeads => NumKeyValueHeads ?? NumAttentionHeads!.Value;
    int HeadDimension => HeadDim ?? HiddenSize!.Value / NumAttentionHeads!.Value;
    double Theta => RopeTheta ?? RopeParameters?.RopeTheta ?? Defaults.RopeTheta;
    /// <summary>Only Mistral's window is honoured: it applies to every layer.</summary>
    int? Window => ModelType == "mistral" ? SlidingWindow : null;
    (RopeJson? Rope, string Field) Scaling => RopeScaling is not null ? (RopeScaling, "rope_scaling") : (RopeParameters, "rope_parameters");
    string? ScalingType => Scaling.Rope is { } r ? r.RopeType ?? r.Type : null;

    /// <summary>Every rule about the file: required fields, supported features, consistent heads, sizes in range, token ids in the vocabulary.</summary>
    public HuggingFaceConfigJson Validate(string path)
    {
        InvalidInputException Bad(string problem) => new(path, problem);
        void Required(string field, object? value)
        {
            if (value is null) throw Bad($"field '{field}' is missing");
        }
        void Range(string field, long value, long max)
        {
            if (value < 1 || value > max) throw Bad($"field '{field}' is {value}; expected 1 to {max:N0}");
        }

        Required("model_type", ModelType);
        if (!LlamaConfig.SupportedModelTypes.Contains(ModelType))
            throw Bad($"field 'model_type' is '{ModelType}'; supported: {string.Join(", ", LlamaConfig.SupportedModelTypes)}");
        Required("hidden_size", HiddenSize);
        Required("num_attention_heads", NumAttentionHeads);
        Required("vocab_size", VocabSize);
        Required("intermediate_size", IntermediateSize);
        Required("num_hidden_layers", NumHiddenLayers);
        int hidden = HiddenSize!.Value, heads = NumAttentionHeads!.Value;
        if (heads <= 0 || KeyValueHeads <= 0 || heads % KeyValueHeads != 0)
            throw Bad($"fields 'num_attention_heads' ({heads}) and 'num_key_value_heads' ({KeyValueHeads}) are inconsistent: the first must be a positive multiple of the second");
        if (HeadDim is null && hidden % heads != 0)
            throw Bad($"field 'hidden_size' ({hidden}) is not divisible by 'num_attention_heads' ({heads}) and 'head_dim' is not given");
        if (HiddenAct != "silu") throw Bad($"field 'hidden_act' is '{HiddenAct}'; only 'silu' (SwiGLU) is supported");
        if (ModelType == "qwen2" && UseSlidingWindow) throw Bad("field 'use_sliding_window' is true; sliding-window attention is not supported");
        if (Window is <= 0) throw Bad($"field 'sliding_window' is {Window}; it must be positive or null");
        // A model mixing full and sliding layers is not supported.
        var allowedLayerType = Window is null ? "full_attention" : "sliding_attention";
        if (LayerTypes is not null && LayerTypes.Any(t => t != allowedLayerType))
            throw Bad($"field 'layer_types' names layers other than '{allowedLayerType}'; attention that differs between layers is not supported");

        Range("vocab_size", VocabSize!.Value, LlamaConfig.MaxVocabSize);
        Range("hidden_size", hidden, LlamaConfig.MaxHiddenSize);
        Range("intermediate_size", IntermediateSize!.Value, LlamaConfig.MaxIntermediateSize);
        Range("num_hidden_layers", NumHiddenLayers!.Value, LlamaConfig.MaxLayers);
        Range("num_attention_heads", heads, LlamaConfig.MaxHeads);
        Range("num_key_value_heads", KeyValueHeads, LlamaConfig.MaxHeads);
        Range("head_dim", HeadDimension, LlamaConfig.MaxHeadDim);
        if (HeadDimension % 2 != 0) throw Bad($"field 'head_dim' is {HeadDimension}; rotary embeddings need an even head dimension");
        Range("max_position_embeddings", MaxPositionEmbeddings, LlamaConfig.MaxPositions);
        if (!(RmsNormEps > 0 && RmsNormEps < 1)) throw Bad($"field 'rms_norm_eps' is {RmsNormEps}; expected a number above 0 and below 1");
        if (!(Theta > 0 && double.IsFinite(Theta))) throw Bad($"field 'rope_theta' is {Theta}; expected a positive number");

        if (Scaling is ({ } rope, var field) && ScalingType != "default")
        {
            var type = ScalingType ?? throw Bad($"field '{field}.rope_type' is missing");
            if (type is not ("llama3" or "linear")) throw Bad($"field '{field}.rope_type' is '{type}'; supported: llama3, linear");
            var factor = rope.Factor ?? throw Bad($"field '{field}.factor' is missing");
            if (!(factor > 0 && double.IsFinite(factor))) throw Bad($"field '{field}.factor' is {factor}; expected a positive number");
            if (type == "llama3")
            {
                var low = rope.LowFreqFactor ?? throw Bad($"field '{field}.low_freq_factor' is missing");
                var high = rope.HighFreqFactor ?? throw Bad($"field '{field}.high_freq_factor' is missing");
                var original = rope.OriginalMaxPositionEmbeddings ?? throw Bad($"field '{field}.original_max_position_embeddings' is missing");
                if (!(low > 0 && high > low && double.IsFinite(high)))
                    throw Bad($"fields '{field}.low_freq_factor' ({low}) and 'high_freq_factor' ({high}) must be positive, the second above the first");
                Range($"{field}.original_max_position_embeddings", original, LlamaConfig.MaxPositions);
            }
        }

        var vocab = VocabSize.Value;
        if (BosTokenId < 0 || BosTokenId >= vocab)
            throw Bad($"field 'bos_token_id' is {BosTokenId}; expected a token id from 0 to {vocab - 1} (vocab_size {vocab})");
        foreach (var eos in EosTokenId)
            if (eos < 0 || eos >= vocab)
                throw Bad($"field 'eos_token_id' holds {eos}; expected token ids from 0 to {vocab - 1} (vocab_size {vocab})");
        return this;
    }

    /// <summary>The architecture this file describes; call <see cref="Validate"/> first.</summary>
    public LlamaConfig ToConfig() => new()
    {
        ModelType = ModelType!,
        VocabSize = VocabSize!.Value,
        HiddenSize = HiddenSize!.Value,
        IntermediateSize = IntermediateSize!.Value,
        NumHiddenLayers = NumHiddenLayers!.Value,
        NumAttentionHeads = NumAttentionHeads!.Value,
        NumKeyValueHeads = KeyValueHeads,
        HeadDim = HeadDimension,
        MaxPositionEmbeddings = MaxPositionEmbeddings,
        RmsNormEps = RmsNormEps,
        RopeTheta = Theta,
        RopeScaling = Scaling.Rope is { } r && ScalingType is "llama3" or "linear"
            ? ScalingType == "llama3"
                ? new RopeScaling("llama3", r.Factor!.Value, r.LowFreqFactor!.Value, r.HighFreqFactor!.Value, r.OriginalMaxPositionEmbeddings!.Value)
                : new RopeScaling(ScalingType, r.Factor!.Value)
            : null,
        TieWordEmbeddings = TieWordEmbeddings,
        QkvBias = ModelType == "qwen2" || AttentionBias,
        OutputBias = ModelType != "qwen2" && AttentionBias,
        TorchDtype = TorchDtype ?? Dtype ?? Defaults.TorchDtype,
        SlidingWindow = Window,
        BosTokenId = BosTokenId,
        EosTokenIds = EosTokenId,
    };

    /// <summary><c>eos_token_id</c>: one token id, or a non-empty list of them.</summary>
    sealed class TokenIdsConverter : JsonConverter<int[]>
    {
        const string Problem = "must be a token id or a non-empty list of token ids";

        public override int[] Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
        {
            if (reader.TokenType != JsonTokenType.StartArray) return [Id(ref reader)];
            var ids = new List<int>();
            while (reader.Read() && reader.TokenType != JsonTokenType.EndArray) ids.Add(Id(ref reader));
            return ids.Count > 0 ? [.. ids] : throw new JsonConfig.FieldException(Problem);
        }

        static int Id(ref Utf8JsonReader reader) =>
            reader.TokenType == JsonTokenType.Number && (reader.TryGetInt32(out var id) || reader.TryGetDouble(out var d) && JsonConfig.WholeInt32(d, out id))
                ? id : throw new JsonConfig.FieldException(Problem);

        public override void Write(Utf8JsonWriter writer, int[] value, JsonSerializerOptions options) => throw new NotSupportedException();
    }

    /// <summary><c>layer_types</c>: an array whose string entries are kept and whose other entries read as null.</summary>
    sealed class LayerTypesConverter : JsonConverter<string?[]>
    {
        public override string?[] Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
        {
            if (reader.TokenType != JsonTokenType.StartArray) throw new JsonConfig.FieldException("must be an array of strings");
            var types = new List<string?>();
            while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
            {
                types.Add(reader.TokenType == JsonTokenType.String && TryString(ref reader, out var s) ? s : null);
                reader.Skip();
            }
            return [.. types];
        }

        static bool TryString(ref Utf8JsonReader reader, out string? value)
        {
            try
            {
                value = reader.GetString();
                return true;
            }
            catch (InvalidOperationException)
            {
                value = null;
                return false;
            }
        }

        public override void Write(Utf8JsonWriter writer, string?[] value, JsonSerializerOptions options) => throw new NotSupportedException();
    }
}
