using System.Text.Json;
using System.Text.Json.Nodes;
using CombaDistill.IO;
using CombaDistill.Modeling.Comba;
using CombaDistill.Modeling.Llama;
using static TorchSharp.torch;

namespace CombaDistill.Conversion;

/// <summary>How to convert; every default is documented in docs/conversion.md.</summary>
public sealed record ConversionOptions
{
    /// <summary>Layers that keep softmax attention; see <see cref="AttentionLayers.Parse"/>.</summary>
    public string KeepAttention { get; init; } = "none";

    /// <summary>
    /// The Comba layer's own defaults except the initial output correction d = −1: the read-out then starts as
    /// S (q̂ + k̂), whose S k̂ term returns what the memory holds under the current key — mostly the current and recent
    /// values, where trained attention heads put much of their weight. On stories260K this takes the untrained
    /// student's loss from 4.75 nats (d = 0.02) to 3.19, against 4.63 with the mixers removed (docs/conversion.md).
    /// </summary>
    public static readonly CombaConfig DefaultComba = new() { InitialD = -1 };

    /// <summary>The Comba layers' options, recorded in the student's config.json.</summary>
    public CombaConfig Comba { get; init; } = DefaultComba;

    /// <summary>The student's dtype; null keeps the teacher's (and its bytes: copied tensors are then bitwise equal).</summary>
    public ScalarType? DType { get; init; }

    /// <summary>Shards are closed before they pass this size (5 GB, as Hugging Face's save_pretrained).</summary>
    public long MaxShardBytes { get; init; } = 5_000_000_000;

    /// <summary>Replace an existing output folder.</summary>
    public bool Force { get; init; }
}

/// <summary>How far a conversion is: bytes of the student written so far, and the tensor being produced (null when done).</summary>
public readonly record struct ConversionProgress(long BytesDone, long BytesTotal, string? Tensor);

/// <summary>
/// Turns a Llama-family checkpoint into a Comba student folder, one tensor at a time: each is read, mapped and
/// written before the next is read, so the memory needed is about the largest single tensor, not the model.
/// Everything is validated from headers and config.json before any tensor data moves, and the folder is built
/// beside its target and renamed into place at the end, so a failed or cancelled run leaves nothing behind.
/// </summary>
public static class CombaConverter
{
    /// <param name="from">a Hugging Face folder, a model.safetensors.index.json, or a .safetensors file</param>
    /// <param name="configPath">the teacher's config.json when it is not beside <paramref name="from"/></param>
    public static ConversionReport Convert(string from, string outFolder, ConversionOptions options, string? configPath = null,
        IProgress<ConversionProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        var source = TeacherSource.Resolve(from, configPath);
        var teacher = LoadTeacherConfig(source.ConfigPath);
        using var checkpoint = Checkpoint.Open(source.CheckpointPath);
        RefuseOutputOverInput(outFolder, source.InputPaths(checkpoint));

        var layout = new CombaStudentConfig
        {
            Architecture = teacher,
            Comba = options.Comba.Validated(),
            AttentionLayers = AttentionLayers.Parse(options.KeepAttention, teacher.NumHiddenLayers),
        }.Validated();
        var plan = ConversionPlan.Create(layout);
        var dropped = CheckTeacher(plan, checkpoint, source.ConfigPath);
        var dtype = options.DType ?? checkpoint.Info("model.embed_tokens.weight").ScalarType;
        var student = layout with { Architecture = teacher with { TorchDtype = DTypeName(dtype) } };

        // Copied tensors keep their stored dtype unless one was asked for, so that they stay bitwise the teacher's.
        var byName = plan.StudentTensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
        var writePlan = plan.StudentTensors
            .Select(t => new PlannedTensor(t.Name, t.Source == TensorSource.Teacher && options.DType is null ? checkpoint.Info(t.Name).ScalarType : dtype, t.Shape))
            .ToList();
        var plannedBytes = writePlan.ToDictionary(t => t.Name, t => t.ByteSize, StringComparer.Ordinal);
        long total = writePlan.Sum(t => t.ByteSize), done = 0, read = 0;

        Tensor Produce(string name)
        {
            cancellationToken.ThrowIfCancellationRequested();
            progress?.Report(new ConversionProgress(done, total, name));
            var tensor = byName[name];
            Tensor value;
            if (tensor.Source == TensorSource.Teacher)
            {
                value = checkpoint.Read(name);
                read += checkpoint.Info(name).ByteSize;
            }
            else
            {
                value = CombaInitialization.Create(tensor.MixerKey!, tensor.Shape, student.Comba);
            }
            done += plannedBytes[name];
            return value;
        }

        using var output = AtomicDirectory.Create(outFolder, options.Force);
        var weightFiles = CheckpointWriter.WriteStreaming(output.Path, writePlan, Produce, options.MaxShardBytes, new Dictionary<string, string> { ["format"] = "pt" });
        cancellationToken.ThrowIfCancellationRequested();

        var sideFiles = new List<string>();
        foreach (var (name, path) in source.FindSideFiles())
        {
            var target = Path.Combine(output.Path, name);
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            IoRetry.Execute(() => File.Copy(path, target));
            sideFiles.Add(name);
        }
        AtomicFile.WriteAllText(Path.Combine(output.Path, "config.json"), student.ToJson().ToJsonString(new() { WriteIndented = true }) + "\n");

        var report = ConversionReport.FromPlan(plan, from, DTypeName(dtype)) with
        {
            Dropped = dropped,
            BytesRead = read,
            BytesWritten = total,
            TokenizerFiles = sideFiles,
            Files = weightFiles.Select(f => Path.GetFileName(f)).Concat(sideFiles).Append("config.json").Append(ConversionReport.FileName)
                .Order(StringComparer.Ordinal).ToList(),
        };
        AtomicFile.WriteAllText(Path.Combine(output.Path, ConversionReport.FileName), report.ToJson());
        cancellationToken.ThrowIfCancellationRequested();
        output.Commit();
        progress?.Report(new ConversionProgress(total, total, null));
        return report;
    }

    /// <summary>The teacher's config.json, refusing a student and anything outside the Llama family by name.</summary>
    static LlamaConfig LoadTeacherConfig(string path)
    {
        // LlamaConfig.Load names any JSON error; this only looks for a model_type to refuse by name
        var modelType = InputFile.ReadJsonObject(path, "config.json", j => j["model_type"] is JsonValue v && v.TryGetValue<string>(out var t) ? t : null);
        if (modelType == CombaStudentConfig.ModelType)
            throw new InvalidInputException(path, "field 'model_type' is 'comba': this is already a Comba student; convert its teacher instead");
        if (modelType is not null && !LlamaConfig.SupportedModelTypes.Contains(modelType))
            throw new InvalidInputException(path, $"field 'model_type' is '{modelType}': conversion needs a Llama-family teacher ({string.Join(", ", LlamaConfig.SupportedModelTypes)})");
        return LlamaConfig.Load(path);
    }

    /// <summary>
    /// Checks the checkpoint against the tensors the config implies, from headers only. Returns the stored tensors
    /// that are not parameters and are left out (rotary tables, a tied lm_head's copy).
    /// </summary>
    static IReadOnlyList<string> CheckTeacher(ConversionPlan plan, Checkpoint checkpoint, string configPath)
    {
        var teacher = plan.Teacher;
        var missing = plan.TeacherTensors.Where(t => !checkpoint.Contains(t.Name)).Select(t => t.Name).ToList();
        var missingProjections = missing.Where(n => ConversionPlan.PartOf(n) == ConversionPlan.Projections).ToList();
        if (missingProjections.Count > 0)
            throw new InvalidInputException(checkpoint.Path,
                $"missing attention projection{Plural(missingProjections)} {List(missingProjections)}: every layer of a Llama-family checkpoint needs self_attn.q_proj, k_proj, v_proj and o_proj"
                + (missingProjections.Any(n => n.EndsWith(".bias", StringComparison.Ordinal)) ? $" (with biases, as {configPath} declares)" : ""));
        if (missing.Count > 0)
            throw new InvalidInputException(checkpoint.Path, $"missing tensor{Plural(missing)} {List(missing)}, which {configPath} implies");

        foreach (var (name, shape) in plan.TeacherTensors)
        {
            var info = checkpoint.Info(name);
            if (info.ScalarType is not (ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Float32 or ScalarType.Float64))
                throw new InvalidInputException(checkpoint.Path, $"tensor '{name}' is {info.DType}; weights must be floating point (F16, BF16, F32, F64)");
            if (info.Shape.SequenceEqual(shape)) continue;
            var expected = $"[{string.Join(", ", shape)}]";
            var key = ConversionPlan.MixerKeyOf(name);
            var heads = key switch
            {
                not null when key.StartsWith("q_proj.", StringComparison.Ordinal) || key == "o_proj.weight" =>
                    $" = num_attention_heads ({teacher.NumAttentionHeads}) × head_dim ({teacher.HeadDim}) with hidden_size {teacher.HiddenSize}",
                not null when key.StartsWith("k_proj.", StringComparison.Ordinal) || key.StartsWith("v_proj.", StringComparison.Ordinal) =>
                    $" = num_key_value_heads ({teacher.NumKeyValueHeads}) × head_dim ({teacher.HeadDim}) with hidden_size {teacher.HiddenSize}",
                _ => null,
            };
            throw new InvalidInputException(checkpoint.Path, heads is null
                ? $"tensor '{name}' has shape {info.ShapeText}, but {configPath} implies {expected}"
                : $"tensor '{name}' has shape {info.ShapeText}, but {configPath} implies {expected}{heads}: the head counts in config.json do not match the weights");
        }

        var expectedNames = plan.TeacherTensors.Select(t => t.Name).ToHashSet(StringComparer.Ordinal);
        var extra = checkpoint.Names.Where(n => !expectedNames.Contains(n)).Order(StringComparer.Ordinal).ToList();
        var dropped = extra.Where(n => n.EndsWith(".rotary_emb.inv_freq", StringComparison.Ordinal) || (teacher.TieWordEmbeddings && n == "lm_head.weight")).ToList();
        var unexpected = extra.Except(dropped).ToList();
        if (unexpected.Count > 0)
            throw new InvalidInputException(checkpoint.Path,
                $"unexpected tensor{Plural(unexpected)} {List(unexpected)}: not part of the {teacher.ModelType} architecture {configPath} describes (another architecture, or a config.json that does not belong to these weights)");
        return dropped;
    }

    /// <summary>Replacing a folder that holds the teacher would delete the teacher.</summary>
    static void RefuseOutputOverInput(string outFolder, IEnumerable<string> inputs)
    {
        var output = Path.GetFullPath(outFolder).TrimEnd(Path.DirectorySeparatorChar);
        var inside = output + Path.DirectorySeparatorChar;
        if (inputs.FirstOrDefault(p => p == output || p.StartsWith(inside, StringComparison.Ordinal)) is { } input)
            throw new InvalidInputException(outFolder, $"the output folder holds the teacher's {input}; choose another output folder");
    }

    public static string DTypeName(ScalarType dtype) => dtype switch
    {
        ScalarType.Float32 => "float32",
        ScalarType.BFloat16 => "bfloat16",
        ScalarType.Float16 => "float16",
        ScalarType.Float64 => "float64",
        _ => throw new ArgumentException($"{dtype} is not a model dtype (float32, bfloat16, float16, float64)"),
    };

    static string Plural<T>(List<T> items) => items.Count == 1 ? "" : "s";

    static string List(List<string> items) =>
        items.Count <= 6 ? string.Join(", ", items) : $"{string.Join(", ", items.Take(6))}, … ({items.Count} in all)";
}
