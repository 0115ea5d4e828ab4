using CombaDistill.IO;
using CombaDistill.Modeling.Llama;
using CombaDistill.Tokenization;

namespace CombaDistill.Modeling.Comba;

/// <summary>
/// What a student folder holds, from config.json and the safetensors headers only: the teacher-style
/// <see cref="ModelSummary"/> (Comba tensors count as the "attention" part, the layers' token mixers; the KV cache is
/// only the kept attention layers'), plus what is particular to a student.
/// </summary>
/// <param name="CombaParameters">parameters the Comba layers add to the teacher's q/k/v/o</param>
/// <param name="RecurrentStateBytes">the decoding state of all Comba layers for one sequence: the same at any length</param>
public sealed record StudentSummary(ModelSummary Model, CombaStudentConfig Student, long CombaParameters, long RecurrentStateBytes)
{
    public static StudentSummary Inspect(string folder, int? context = null)
    {
        if (context is <= 0) throw new ArgumentException($"--context must be positive, got {context}");
        ModelFolder.Require(folder);
        var student = CombaStudentConfig.Load(Path.Combine(folder, "config.json"));
        var config = student.Architecture;
        using var checkpoint = Checkpoint.Open(folder);

        var byPart = ModelSummary.Parts.ToDictionary(p => p, _ => 0L);
        long comba = 0;
        foreach (var name in checkpoint.Names)
        {
            var count = checkpoint.Info(name).NumberOfElements;
            var part = ModelSummary.PartOf(name);
            byPart[part] += count;
            if (part == "attention" && !IsProjection(name)) comba += count;
        }
        var dtypes = checkpoint.Names.Select(n => checkpoint.Info(n).DType).Distinct().Order().ToList();
        var itemSize = SafeTensorsDType.ItemSize(checkpoint.Contains("model.embed_tokens.weight") ? checkpoint.Info("model.embed_tokens.weight").DType : dtypes.FirstOrDefault() ?? "F32");
        var tokens = context ?? config.MaxPositionEmbeddings;
        var kvBytes = 2L * student.AttentionLayers.Count * config.NumKeyValueHeads * config.HeadDim * tokens * itemSize;

        // per Comba layer: the state (heads, Dk, Dv) in float32 (float64 for a float64 model), and the short
        // convolution's last kernel − 1 inputs of q, k and v in the model's dtype
        var stateItem = itemSize == 8 ? 8 : 4;
        var convChannels = (config.NumAttentionHeads + 2L * config.NumKeyValueHeads) * config.HeadDim;
        var perLayer = (long)config.NumAttentionHeads * student.Comba.KeyDim(config.HeadDim) * student.Comba.ValueDim(config.HeadDim) * stateItem
            + (student.Comba.ShortConv > 0 ? convChannels * (student.Comba.ShortConv - 1) * itemSize : 0);

        var summary = new ModelSummary(
            folder, config, byPart, byPart.Values.Sum(), dtypes,
            checkpoint.Files.Select(f => new WeightFile(Path.GetFileName(f), new FileInfo(f).Length)).ToList(),
            checkpoint.TotalBytes, ModelSummary.DescribeTokenizer(folder, config), tokens, kvBytes);
        return new StudentSummary(summary, student, comba, student.CombaLayerCount * perLayer);
    }

    static bool IsProjection(string name) =>
        name.Contains(".self_attn.q_proj.", StringComparison.Ordinal) || name.Contains(".self_attn.k_proj.", StringComparison.Ordinal)
        || name.Contains(".self_attn.v_proj.", StringComparison.Ordinal) || name.Contains(".self_attn.o_proj.", StringComparison.Ordinal);
}
