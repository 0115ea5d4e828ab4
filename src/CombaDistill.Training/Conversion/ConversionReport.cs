using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace CombaDistill.Conversion;

public sealed record PartCount(string Part, long Teacher, long Student);

/// <summary>One kind of new tensor (below <c>self_attn.</c>), summed over the Comba layers.</summary>
public sealed record NewTensor(string Tensor, int Layers, long Parameters, string Initialisation);

/// <summary>What became of one teacher layer.</summary>
/// <param name="Mixer">"comba", or "attention" for a layer kept as softmax attention</param>
/// <param name="FromTeacher">self_attn tensors taken from the teacher (MLP and norms are always copied)</param>
/// <param name="New">self_attn tensors initialised by the converter</param>
public sealed record LayerMapping(int Layer, string Mixer, IReadOnlyList<string> FromTeacher, IReadOnlyList<string> New, long ExtraParameters);

/// <summary>
/// conversion_report.json: parameters per part, the extra parameters and their share of the teacher's, the
/// layer-by-layer mapping, the new tensors with their initialisation, the dtype, and what was read and written.
/// </summary>
public sealed record ConversionReport
{
    public const string FileName = "conversion_report.json";

    public required string Teacher { get; init; }
    public required string TeacherModelType { get; init; }
    public required string DType { get; init; }
    public required int Layers { get; init; }
    public required IReadOnlyList<int> AttentionLayers { get; init; }
    public required long TeacherParameters { get; init; }
    public required long StudentParameters { get; init; }
    public long ExtraParameters => StudentParameters - TeacherParameters;
    /// <summary>Extra parameters as a fraction of the teacher's (0.002 = 0.2 %).</summary>
    public double ExtraShare => TeacherParameters == 0 ? 0 : (double)ExtraParameters / TeacherParameters;
    public required IReadOnlyList<PartCount> Parts { get; init; }
    public required IReadOnlyList<NewTensor> NewTensors { get; init; }
    public required IReadOnlyList<LayerMapping> LayerMap { get; init; }
    public required JsonObject CombaOptions { get; init; }
    /// <summary>Teacher tensors not carried over (stored rotary tables, a tied lm_head's copy).</summary>
    public IReadOnlyList<string> Dropped { get; init; } = [];
    public long BytesRead { get; init; }
    public long BytesWritten { get; init; }
    /// <summary>Files of the output folder, relative to it.</summary>
    public IReadOnlyList<string> Files { get; init; } = [];
    public IReadOnlyList<string> TokenizerFiles { get; init; } = [];

    /// <summary>The parameter counts and mapping of a plan, before any bytes move.</summary>
    public static ConversionReport FromPlan(ConversionPlan plan, string teacher, string dtype)
    {
        var initialised = plan.StudentTensors.Where(t => t.Source == TensorSource.Initialised).ToList();
        var newTensors = initialised
            .GroupBy(t => t.MixerKey ?? t.Name)
            .Select(g => new NewTensor(g.Key, g.Select(t => t.Layer).Distinct().Count(), g.Sum(t => t.Count),
                CombaInitialization.Describe(g.Key, plan.Student.Comba)))
            .ToList();
        var layers = Enumerable.Range(0, plan.Student.NumLayers).Select(layer =>
        {
            var mixer = plan.StudentTensors.Where(t => t.Layer == layer && t.MixerKey is not null).ToList();
            return new LayerMapping(layer, plan.Student.IsAttentionLayer(layer) ? "attention" : "comba",
                mixer.Where(t => t.Source == TensorSource.Teacher).Select(t => t.MixerKey!).ToList(),
                mixer.Where(t => t.Source == TensorSource.Initialised).Select(t => t.MixerKey!).ToList(),
                mixer.Where(t => t.Source == TensorSource.Initialised).Sum(t => t.Count));
        }).ToList();
        return new ConversionReport
        {
            Teacher = teacher,
            TeacherModelType = plan.Teacher.ModelType,
            DType = dtype,
            Layers = plan.Student.NumLayers,
            AttentionLayers = plan.Student.AttentionLayers,
            TeacherParameters = plan.TeacherParameterCount,
            StudentParameters = plan.StudentParameterCount,
            Parts = plan.PartCounts().Select(p => new PartCount(p.Part, p.Teacher, p.Student)).ToList(),
            NewTensors = newTensors,
            LayerMap = layers,
            CombaOptions = plan.Student.Comba.ToJson(),
        };
    }

    static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    public string ToJson() => JsonSerializer.Serialize(this, Json) + "\n";

    public static ConversionReport FromJson(string json) =>
        JsonSerializer.Deserialize<ConversionReport>(json, Json) ?? throw new JsonException("conversion report is null");
}
