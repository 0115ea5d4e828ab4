using System.Text.Json.Nodes;
using CombaDistill.IO;
using CombaDistill.Modeling.Llama;

namespace CombaDistill.Modeling.Comba;

/// <summary>
/// What a Comba student's config.json holds: the teacher's architecture (every Hugging Face field, so embeddings,
/// MLPs, norms, rotary and kept attention layers are rebuilt exactly), the Comba layer options, and which layers
/// kept the teacher's softmax attention. Written with <c>model_type: "comba"</c>; the teacher's own model type is
/// kept in <c>teacher_model_type</c> because it decides details such as Qwen2's q/k/v biases.
/// </summary>
public sealed record CombaStudentConfig
{
    public const string ModelType = "comba";

    /// <summary>The model type of a folder written by <c>combadistill export</c>: the same fields, read the same way.</summary>
    public const string ExportedModelType = "combadistill_comba";

    /// <summary>True for a student folder's model type and for an exported one's.</summary>
    public static bool IsStudentType(string? modelType) => modelType is ModelType or ExportedModelType;
    public const string TeacherModelTypeField = "teacher_model_type";
    public const string AttentionLayersField = "attention_layers";

    /// <summary>The teacher's architecture; its TorchDtype is the student's stored dtype.</summary>
    public required LlamaConfig Architecture { get; init; }

    public CombaConfig Comba { get; init; } = new();

    /// <summary>Layer indices (ascending) whose self_attn is the teacher's softmax attention; every other layer is Comba.</summary>
    public IReadOnlyList<int> AttentionLayers { get; init; } = [];

    public int NumLayers => Architecture.NumHiddenLayers;

    public bool IsAttentionLayer(int layer) => AttentionLayers.Contains(layer);

    public int CombaLayerCount => NumLayers - AttentionLayers.Count;

    /// <summary>Throws <see cref="InvalidInputException"/> naming <paramref name="path"/> when a field is out of range.</summary>
    public CombaStudentConfig Validated(string? path = null)
    {
        Comba.Validated(path);
        var previous = -1;
        foreach (var layer in AttentionLayers)
        {
            if (layer < 0 || layer >= NumLayers)
                throw new InvalidInputException(path, $"field '{AttentionLayersField}' names layer {layer}, but the model has layers 0 … {NumLayers - 1}");
            if (layer <= previous)
                throw new InvalidInputException(path, $"field '{AttentionLayersField}' must list distinct layers in ascending order");
            previous = layer;
        }
        return this;
    }

    public JsonObject ToJson()
    {
        var j = Architecture.ToJson();
        j["architectures"] = new JsonArray("CombaForCausalLM");
        j["model_type"] = ModelType;
        j[TeacherModelTypeField] = Architecture.ModelType;
        j[AttentionLayersField] = new JsonArray(AttentionLayers.Select(l => (JsonNode)l).ToArray());
        return Comba.WriteTo(j);
    }

    /// <summary>The fields of a student's config.json beyond the teacher's architecture and the comba_* options.</summary>
    sealed record StudentFieldsJson
    {
        public string? ModelType { get; init; }
        public string? TeacherModelType { get; init; }
        public int[] AttentionLayers { get; init; } = [];
    }

    public static CombaStudentConfig FromJson(JsonObject j, string path)
    {
        var fields = JsonConfig.Bind<StudentFieldsJson>(j, path, JsonConfig.SnakeCase);
        if (!IsStudentType(fields.ModelType))
            throw new InvalidInputException(path, $"field 'model_type' is '{fields.ModelType ?? "(missing)"}'; a Comba student has '{ModelType}' (or '{ExportedModelType}' when exported)");
        var teacherType = fields.TeacherModelType ?? throw new InvalidInputException(path, $"field '{TeacherModelTypeField}' is missing");

        // The architecture fields are the teacher's, read by the teacher's own parser under its own model type.
        var teacher = (JsonObject)j.DeepClone();
        teacher["model_type"] = teacherType;
        return new CombaStudentConfig
        {
            Architecture = LlamaConfig.FromJson(teacher, path),
            Comba = CombaConfig.FromJson(j, path),
            AttentionLayers = fields.AttentionLayers,
        }.Validated(path);
    }

    public static CombaStudentConfig Load(string path) => InputFile.ReadJsonObject(path, "config.json", root => FromJson(root, path));
}
