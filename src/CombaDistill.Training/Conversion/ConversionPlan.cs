using CombaDistill.Modeling.Comba;
using CombaDistill.Modeling.Llama;
using static TorchSharp.torch;

namespace CombaDistill.Conversion;

/// <summary>Where a student tensor's values come from: the teacher tensor of the same name, or an initialisation.</summary>
public enum TensorSource { Teacher, Initialised }

/// <summary>One tensor of the student, in state_dict order.</summary>
/// <param name="Layer">the decoder layer it belongs to, or null (embeddings, final norm, lm_head)</param>
/// <param name="Part">one of <see cref="ConversionPlan.Parts"/></param>
public sealed record StudentTensor(string Name, long[] Shape, TensorSource Source, int? Layer, string Part)
{
    public long Count => Shape.Aggregate(1L, (a, b) => a * b);

    /// <summary>The key below <c>self_attn.</c> (e.g. <c>a_proj.weight</c>), or null for a tensor outside a mixer.</summary>
    public string? MixerKey => ConversionPlan.MixerKeyOf(Name);
}

/// <summary>
/// The teacher's and the student's tensors for a pair of configs, read off both models built on the meta device
/// (shapes without storage), so names and shapes are the modules' own and a 1B-parameter plan costs no memory.
/// Every student tensor whose name the teacher has is copied from it (q/k/v/o_proj keep their names under
/// <c>self_attn.</c>); the rest are the Comba layers' new tensors.
/// </summary>
public sealed class ConversionPlan
{
    public const string Embeddings = "embeddings", Projections = "attention q/k/v/o", CombaExtra = "comba (new)",
        Mlp = "mlp", Norms = "norms", Head = "lm_head";

    /// <summary>Report order of the parts every tensor falls into.</summary>
    public static readonly string[] Parts = [Embeddings, Projections, CombaExtra, Mlp, Norms, Head];

    public LlamaConfig Teacher { get; }
    public CombaStudentConfig Student { get; }

    /// <summary>The teacher's parameters by name, with shapes, in state_dict order.</summary>
    public IReadOnlyList<(string Name, long[] Shape)> TeacherTensors { get; }

    public IReadOnlyList<StudentTensor> StudentTensors { get; }

    ConversionPlan(LlamaConfig teacher, CombaStudentConfig student, List<(string, long[])> teacherTensors, List<StudentTensor> studentTensors) =>
        (Teacher, Student, TeacherTensors, StudentTensors) = (teacher, student, teacherTensors, studentTensors);

    public static ConversionPlan Create(CombaStudentConfig student)
    {
        var teacher = student.Architecture;
        var teacherTensors = teacher.Tensors().ToList();
        var teacherNames = teacherTensors.Select(t => t.Name).ToHashSet(StringComparer.Ordinal);

        List<StudentTensor> studentTensors;
        using (var meta = new CombaForCausalLM(student, ScalarType.Float32, META))
        {
            studentTensors = meta.state_dict()
                .Select(e => new StudentTensor(e.Key, e.Value.shape,
                    teacherNames.Contains(e.Key) ? TensorSource.Teacher : TensorSource.Initialised, LayerOf(e.Key), PartOf(e.Key)))
                .ToList();
        }
        return new ConversionPlan(teacher, student, teacherTensors, studentTensors);
    }

    public long TeacherParameterCount => TeacherTensors.Sum(t => t.Shape.Aggregate(1L, (a, b) => a * b));

    public long StudentParameterCount => StudentTensors.Sum(t => t.Count);

    public long ExtraParameterCount => StudentParameterCount - TeacherParameterCount;

    /// <summary>Parameters per part, teacher and student.</summary>
    public IReadOnlyList<(string Part, long Teacher, long Student)> PartCounts()
    {
        var teacher = TeacherTensors.GroupBy(t => PartOf(t.Name)).ToDictionary(g => g.Key, g => g.Sum(t => t.Shape.Aggregate(1L, (a, b) => a * b)));
        var student = StudentTensors.GroupBy(t => t.Part).ToDictionary(g => g.Key, g => g.Sum(t => t.Count));
        return Parts.Select(p => (p, teacher.GetValueOrDefault(p), student.GetValueOrDefault(p)))
            .Where(p => p.Item2 != 0 || p.Item3 != 0).ToList();
    }

    /// <summary>"model.layers.12.self_attn.q_proj.weight" → 12.</summary>
    public static int? LayerOf(string name)
    {
        const string prefix = "model.layers.";
        if (!name.StartsWith(prefix, StringComparison.Ordinal)) return null;
        var end = name.IndexOf('.', prefix.Length);
        return end > 0 && int.TryParse(name.AsSpan(prefix.Length, end - prefix.Length), out var layer) ? layer : null;
    }

    /// <summary>"model.layers.3.self_attn.a_proj.weight" → "a_proj.weight"; null outside self_attn.</summary>
    public static string? MixerKeyOf(string name)
    {
        const string mixer = ".self_attn.";
        var at = name.IndexOf(mixer, StringComparison.Ordinal);
        return at < 0 ? null : name[(at + mixer.Length)..];
    }

    static readonly string[] ProjectionKeys = ["q_proj.", "k_proj.", "v_proj.", "o_proj."];

    public static string PartOf(string name)
    {
        if (name == "model.embed_tokens.weight") return Embeddings;
        if (name == "lm_head.weight") return Head;
        if (MixerKeyOf(name) is { } key) return ProjectionKeys.Any(p => key.StartsWith(p, StringComparison.Ordinal)) ? Projections : CombaExtra;
        if (name.Contains(".mlp.", StringComparison.Ordinal)) return Mlp;
        if (name.EndsWith("norm.weight", StringComparison.Ordinal)) return Norms;
        throw new ArgumentException($"tensor '{name}' belongs to no known part of a Llama-family model");
    }
}
