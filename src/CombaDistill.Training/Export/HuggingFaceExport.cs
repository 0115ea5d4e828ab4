using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using CombaDistill.Conversion;
using CombaDistill.IO;
using CombaDistill.Modeling;
using CombaDistill.Modeling.Comba;
using CombaDistill.Modeling.Llama;
using static TorchSharp.torch;

namespace CombaDistill.Export;

/// <summary>What <see cref="HuggingFaceExport.Export"/> takes besides the two folders.</summary>
public sealed record ExportOptions
{
    /// <summary>The weights' dtype in the export; null keeps the student's stored dtype.</summary>
    public ScalarType? DType { get; init; }

    /// <summary>model.safetensors is split into shards (with an index) above this size.</summary>
    public long MaxShardBytes { get; init; } = 5_000_000_000;

    public bool Force { get; init; }

    /// <summary>A distillation run folder (recipe.yaml, summary.json) for the model card; null looks beside the student.</summary>
    public string? RunFolder { get; init; }

    /// <summary>An <c>eval</c> output folder (report.json) for the model card's results; null looks in the run folder.</summary>
    public string? EvalFolder { get; init; }
}

/// <summary>What an export wrote.</summary>
public sealed record ExportResult(string Folder, string DType, IReadOnlyList<string> Files, long Parameters, string? RunFolder, string? EvalFolder);

/// <summary>
/// A Comba student as a Hugging Face folder that transformers loads with trust_remote_code: config.json with
/// model_type <see cref="CombaStudentConfig.ExportedModelType"/> (fla registers "comba" for a different model) and
/// auto_map, the modeling code (this library's embedded Python: a transformers-free maths module, a configuration
/// and a modeling file), the weights under their own names as safetensors (sharded above a size), the tokenizer
/// files, generation_config.json and a README model card. The folder is built aside and appears all at once.
/// </summary>
public static class HuggingFaceExport
{
    public const string CoreModule = "combadistill_comba_core.py";
    public const string ConfigurationModule = "configuration_combadistill_comba.py";
    public const string ModelingModule = "modeling_combadistill_comba.py";
    public static readonly string[] PythonFiles = [CoreModule, ConfigurationModule, ModelingModule];
    public const string ArchitectureName = "CombaDistillForCausalLM";

    /// <summary>The embedded Python file <paramref name="name"/> (one of <see cref="PythonFiles"/>).</summary>
    public static string PythonSource(string name)
    {
        using var stream = typeof(HuggingFaceExport).Assembly.GetManifestResourceStream("export/" + name)
            ?? throw new InvalidOperationException($"embedded resource export/{name} is missing from {typeof(HuggingFaceExport).Assembly.GetName().Name}");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }

    public static ExportResult Export(string studentFolder, string outFolder, ExportOptions? options = null, CancellationToken cancellationToken = default)
    {
        options ??= new ExportOptions();
        var (config, configPath) = LoadStudent(studentFolder);
        using var checkpoint = Checkpoint.Open(studentFolder);
        var expected = ExpectedTensors(config);
        CheckTensors(checkpoint, expected, studentFolder);
        var storedType = LlamaForCausalLM.ParseDtype(config.Architecture.TorchDtype, configPath);
        var dtype = options.DType ?? storedType;
        var dtypeName = CombaConverter.DTypeName(dtype);
        if (dtype == ScalarType.Float64)
            throw new InvalidInputException(configPath, "the student is stored in float64, which is not an export dtype; pass --dtype float32, bfloat16 or float16");
        if (Path.GetFullPath(outFolder).TrimEnd('/') == Path.GetFullPath(studentFolder).TrimEnd('/'))
            throw new InvalidInputException(outFolder, "is the student folder itself; export to a new folder");
        var run = FindRunFolder(studentFolder, options.RunFolder);
        var eval = FindEvalFolder(run, options.EvalFolder);

        using var output = AtomicDirectory.Create(outFolder, options.Force);
        // the student's own names and order; every tensor converted on the way (bit copies where the dtype is kept)
        var plan = expected.Select(e => new PlannedTensor(e.Name, dtype, e.Shape)).ToList();
        var files = CheckpointWriter.WriteStreaming(output.Path, plan, name =>
        {
            cancellationToken.ThrowIfCancellationRequested();
            return checkpoint.Read(name, dtype);
        }, options.MaxShardBytes, new Dictionary<string, string> { ["format"] = "pt" }).Select(f => Path.GetFileName(f)!).ToList();

        var exported = ExportConfig(config, dtypeName);
        Write(output.Path, "config.json", exported.ToJsonString(Indented) + "\n", files);
        foreach (var name in PythonFiles) Write(output.Path, name, PythonSource(name), files);
        foreach (var name in TeacherSource.SideFiles.Where(n => n != "generation_config.json"))
        {
            var source = Path.Combine(studentFolder, name);
            if (!File.Exists(source)) continue;
            var target = Path.Combine(output.Path, name);
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            IoRetry.Execute(() => File.Copy(source, target));
            files.Add(name);
        }
        Write(output.Path, "generation_config.json", GenerationConfig(config.Architecture, Path.Combine(studentFolder, "generation_config.json")).ToJsonString(Indented) + "\n", files);
        var parameters = expected.Sum(e => e.Shape.Aggregate(1L, (a, b) => a * b));
        var card = ModelCard.Write(new ModelCard.Inputs(config, dtypeName, parameters, studentFolder, run, eval));
        Write(output.Path, "README.md", card, files);
        cancellationToken.ThrowIfCancellationRequested();
        output.Commit();
        return new ExportResult(output.FinalPath, dtypeName, files, parameters, run, eval);
    }

    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    static void Write(string folder, string name, string text, List<string> files)
    {
        AtomicFile.WriteAllText(Path.Combine(folder, name), text);
        files.Add(name);
    }

    /// <summary>The student's config, refusing with one line anything that is not a student folder.</summary>
    static (CombaStudentConfig Config, string Path) LoadStudent(string folder)
    {
        var type = CausalLMLoader.ModelTypeOf(folder);
        var path = Path.Combine(folder, "config.json");
        if (!CombaStudentConfig.IsStudentType(type))
            throw new InvalidInputException(path, $"field 'model_type' is '{type}': not a Comba student; export takes a folder made by convert or distill");
        return (CombaStudentConfig.Load(path), path);
    }

    /// <summary>Every tensor a student of this config holds, with its shape, in the model's order (built on the meta device: no memory).</summary>
    internal static IReadOnlyList<(string Name, long[] Shape)> ExpectedTensors(CombaStudentConfig config)
    {
        using var model = new CombaForCausalLM(config, ScalarType.Float32, META);
        return model.state_dict().Select(kv => (kv.Key, kv.Value.shape)).ToList();
    }

    /// <summary>The checkpoint must hold exactly the expected tensors, with their shapes, in a floating-point dtype.</summary>
    internal static void CheckTensors(Checkpoint checkpoint, IReadOnlyList<(string Name, long[] Shape)> expected, string folder)
    {
        var missing = expected.Where(e => !checkpoint.Contains(e.Name)).Select(e => e.Name).ToList();
        if (missing.Count > 0)
            throw new InvalidInputException(folder, $"checkpoint lacks {missing.Count} tensor(s) of this student, e.g. '{missing[0]}'");
        var names = expected.Select(e => e.Name).ToHashSet();
        var extra = checkpoint.Names.Where(n => !names.Contains(n)).OrderBy(n => n, StringComparer.Ordinal).ToList();
        if (extra.Count > 0)
            throw new InvalidInputException(folder, $"checkpoint holds {extra.Count} tensor(s) this student does not have, e.g. '{extra[0]}'");
        foreach (var (name, shape) in expected)
        {
            var info = checkpoint.Info(name);
            if (!info.Shape.SequenceEqual(shape))
                throw new InvalidInputException(checkpoint.FileOf(name), $"tensor '{name}' has shape [{string.Join(", ", info.Shape)}]; this student needs [{string.Join(", ", shape)}]");
            if (info.DType is not ("F32" or "BF16" or "F16" or "F64"))
                throw new InvalidInputException(checkpoint.FileOf(name), $"tensor '{name}' is {info.DType}; a student's tensors are floating point");
        }
    }

    /// <summary>The student's config.json fields under our own model type, plus what transformers needs to find the code.</summary>
    public static JsonObject ExportConfig(CombaStudentConfig config, string dtypeName)
    {
        var student = config with { Architecture = config.Architecture with { TorchDtype = dtypeName } };
        var j = student.ToJson();
        j["model_type"] = CombaStudentConfig.ExportedModelType;
        j["architectures"] = new JsonArray(ArchitectureName);
        j["auto_map"] = new JsonObject
        {
            ["AutoConfig"] = Path.GetFileNameWithoutExtension(ConfigurationModule) + ".CombaDistillConfig",
            ["AutoModel"] = Path.GetFileNameWithoutExtension(ModelingModule) + ".CombaDistillModel",
            ["AutoModelForCausalLM"] = Path.GetFileNameWithoutExtension(ModelingModule) + "." + ArchitectureName,
        };
        j["use_cache"] = true;
        return j;
    }

    /// <summary>The student's generation_config.json with the config's special ids filled in where it has none, or one made from the config.</summary>
    static JsonObject GenerationConfig(LlamaConfig architecture, string existing)
    {
        JsonObject j;
        try
        {
            j = File.Exists(existing) ? JsonNode.Parse(File.ReadAllText(existing)) as JsonObject ?? new JsonObject() : new JsonObject();
        }
        catch (JsonException e) { throw new InvalidInputException(existing, $"not valid JSON ({e.Message})", e); }
        j["bos_token_id"] ??= architecture.BosTokenId;
        j["eos_token_id"] ??= architecture.EosTokenIds.Length == 1 ? architecture.EosTokenIds[0] : new JsonArray(architecture.EosTokenIds.Select(e => (JsonNode)e).ToArray());
        return j;
    }

    /// <summary>The run folder named, or the student's parent when that holds a run's recipe.yaml (runs/X/student).</summary>
    static string? FindRunFolder(string studentFolder, string? named)
    {
        if (named is not null)
        {
            if (!File.Exists(Path.Combine(named, Distillation.DistillationRun.RecipeCopy)))
                throw new InvalidInputException(named, $"is not a distillation run folder ({Distillation.DistillationRun.RecipeCopy} not found)");
            return Path.GetFullPath(named);
        }
        var parent = Path.GetDirectoryName(Path.GetFullPath(studentFolder).TrimEnd('/'));
        return parent is not null && File.Exists(Path.Combine(parent, Distillation.DistillationRun.RecipeCopy)) ? parent : null;
    }

    /// <summary>The eval folder named, or the run folder's eval/ when it holds a report.json.</summary>
    static string? FindEvalFolder(string? run, string? named)
    {
        if (named is not null)
        {
            if (!File.Exists(Path.Combine(named, "report.json")))
                throw new InvalidInputException(named, "is not an eval output folder (report.json not found)");
            return Path.GetFullPath(named);
        }
        if (run is null) return null;
        var candidate = Path.Combine(run, "eval");
        return File.Exists(Path.Combine(candidate, "report.json")) ? candidate : null;
    }

    /// <summary>
    /// An exported folder back as a student folder (model_type "comba"): the same tensors, bit for bit, and the same
    /// comba_* fields, so export and back loses nothing. The tokenizer and generation_config.json come along.
    /// </summary>
    public static IReadOnlyList<string> ToStudentFolder(string exportedFolder, string outFolder, bool force = false, long maxShardBytes = 5_000_000_000, CancellationToken cancellationToken = default)
    {
        var configPath = Path.Combine(exportedFolder, "config.json");
        var type = CausalLMLoader.ModelTypeOf(exportedFolder);
        if (type != CombaStudentConfig.ExportedModelType)
            throw new InvalidInputException(configPath, $"field 'model_type' is '{type}', not '{CombaStudentConfig.ExportedModelType}'");
        var config = CombaStudentConfig.Load(configPath);
        using var checkpoint = Checkpoint.Open(exportedFolder);
        var expected = ExpectedTensors(config);
        CheckTensors(checkpoint, expected, exportedFolder);
        if (Path.GetFullPath(outFolder).TrimEnd(Path.DirectorySeparatorChar) == Path.GetFullPath(exportedFolder).TrimEnd(Path.DirectorySeparatorChar))
            throw new InvalidInputException(outFolder, "is the export being read; choose another output folder");
        using var output = AtomicDirectory.Create(outFolder, force);
        var plan = expected.Select(e => new PlannedTensor(e.Name, checkpoint.Info(e.Name).ScalarType, e.Shape)).ToList();
        var files = CheckpointWriter.WriteStreaming(output.Path, plan, name =>
        {
            cancellationToken.ThrowIfCancellationRequested();
            return checkpoint.Read(name);
        }, maxShardBytes, new Dictionary<string, string> { ["format"] = "pt" }).Select(f => Path.GetFileName(f)!).ToList();
        Write(output.Path, "config.json", config.ToJson().ToJsonString(Indented) + "\n", files);
        foreach (var name in TeacherSource.SideFiles)
        {
            var source = Path.Combine(exportedFolder, name);
            if (!File.Exists(source)) continue;
            var target = Path.Combine(output.Path, name);
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            IoRetry.Execute(() => File.Copy(source, target));
            files.Add(name);
        }
        output.Commit();
        return files;
    }
}
