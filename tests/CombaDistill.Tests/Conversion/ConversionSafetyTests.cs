using System.Text.Json.Nodes;
using CombaDistill.Conversion;
using CombaDistill.IO;
using CombaDistill.Tests.Modeling;
using CombaDistill.Tests.Support;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Conversion;

/// <summary>Nothing partial on failure, no silent overwrite, and a clear error naming the file for each kind of bad input.</summary>
public class ConversionSafetyTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    static string Teacher(TempDir temp, string name = "teacher", long maxShardBytes = long.MaxValue) =>
        TeacherFolders.WriteRandom(temp[name], TinyModels.Llama3Gqa, seed: 1, maxShardBytes: maxShardBytes);

    /// <summary>Nothing but the named entries remains in the temporary folder: no output, no hidden temporary sibling.</summary>
    static void AssertOnly(TempDir temp, params string[] names) =>
        Assert.Equal(names.Order(StringComparer.Ordinal), Directory.EnumerateFileSystemEntries(temp.Path).Select(Path.GetFileName).Order(StringComparer.Ordinal));

    [Fact]
    public void A_teacher_shard_truncated_mid_conversion_fails_naming_it_and_leaves_no_output()
    {
        using var temp = new TempDir();
        var teacher = Teacher(temp, maxShardBytes: 20_000);
        var lastShard = Directory.GetFiles(teacher, "model-*-of-*.safetensors").Order(StringComparer.Ordinal).Last();
        var truncated = false;
        var progress = new SyncProgress<ConversionProgress>(p =>
        {
            // once the first tensors are written, the last shard loses its tail (as a dying disk or a concurrent writer would do)
            if (truncated || p.BytesDone == 0) return;
            using (var f = new FileStream(lastShard, FileMode.Open, FileAccess.Write)) f.SetLength(f.Length - 100);
            truncated = true;
        });

        var e = Assert.Throws<InvalidInputException>(() =>
            CombaConverter.Convert(teacher, temp["student"], new ConversionOptions(), progress: progress, cancellationToken: Ct));
        Assert.True(truncated);
        Assert.Contains(lastShard, e.Message);
        Assert.Contains("truncated", e.Message);
        AssertOnly(temp, "teacher");
    }

    [Fact]
    public void Cancellation_mid_conversion_leaves_no_output_and_an_existing_output_untouched()
    {
        using var temp = new TempDir();
        var teacher = Teacher(temp);
        Directory.CreateDirectory(temp["student"]);
        File.WriteAllText(temp["student/config.json"], "{}");            // an earlier student, which --force may replace
        File.WriteAllText(temp["student/model.safetensors"], "old");
        File.WriteAllText(temp["student/keep.txt"], "old");
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        var reports = 0;
        var progress = new SyncProgress<ConversionProgress>(_ => { if (++reports == 5) cancel.Cancel(); });

        Assert.ThrowsAny<OperationCanceledException>(() =>
            CombaConverter.Convert(teacher, temp["student"], new ConversionOptions { Force = true }, progress: progress, cancellationToken: cancel.Token));
        AssertOnly(temp, "teacher", "student");
        Assert.Equal(["config.json", "keep.txt", "model.safetensors"], Directory.GetFileSystemEntries(temp["student"]).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void An_existing_output_is_refused_without_force_and_replaced_with_it()
    {
        using var temp = new TempDir();
        var teacher = Teacher(temp);
        Directory.CreateDirectory(temp["student"]);
        File.WriteAllText(temp["student/keep.txt"], "old");

        var e = Assert.Throws<InvalidInputException>(() => CombaConverter.Convert(teacher, temp["student"], new ConversionOptions(), cancellationToken: Ct));
        Assert.Contains("--force", e.Message);
        Assert.Equal("old", File.ReadAllText(temp["student/keep.txt"]));
        AssertOnly(temp, "teacher", "student");

        // a folder that is not a model folder is refused even with --force
        var notModel = Assert.Throws<InvalidInputException>(() => CombaConverter.Convert(teacher, temp["student"], new ConversionOptions { Force = true }, cancellationToken: Ct));
        Assert.Contains("is not a model folder (no config.json); --force replaces only", notModel.Message);
        Assert.Equal("old", File.ReadAllText(temp["student/keep.txt"]));

        // an earlier conversion is replaced whole
        File.WriteAllText(temp["student/config.json"], "{}");
        File.WriteAllText(temp["student/model.safetensors"], "old");
        var bytes = new List<long>();
        var report = CombaConverter.Convert(teacher, temp["student"], new ConversionOptions { Force = true },
            progress: new SyncProgress<ConversionProgress>(p => bytes.Add(p.BytesDone)), cancellationToken: Ct);
        Assert.False(File.Exists(temp["student/keep.txt"]));
        Assert.True(File.Exists(temp["student/model.safetensors"]));
        AssertOnly(temp, "teacher", "student");
        // progress climbs over bytes to the total
        Assert.Equal(bytes.Order(), bytes);
        Assert.Equal(report.BytesWritten, bytes[^1]);
        Assert.Equal(new FileInfo(temp["student/model.safetensors"]).Length - 8 - BitConverter.ToInt64(File.ReadAllBytes(temp["student/model.safetensors"]), 0), report.BytesWritten);
    }

    [Fact]
    public void The_teachers_own_folder_is_refused_as_output_even_with_force()
    {
        using var temp = new TempDir();
        var teacher = Teacher(temp);
        Assert.Contains("holds the teacher", Assert.Throws<InvalidInputException>(() =>
            CombaConverter.Convert(teacher, teacher, new ConversionOptions { Force = true }, cancellationToken: Ct)).Message);
        Assert.Contains("holds the teacher", Assert.Throws<InvalidInputException>(() =>
            CombaConverter.Convert(teacher, temp.Path, new ConversionOptions { Force = true }, cancellationToken: Ct)).Message);
        Assert.True(File.Exists(Path.Combine(teacher, "model.safetensors")));
    }

    /// <summary>Rewrites the teacher's config.json through <paramref name="edit"/>.</summary>
    static void EditConfig(string teacher, Action<JsonObject> edit)
    {
        var path = Path.Combine(teacher, "config.json");
        var json = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        edit(json);
        File.WriteAllText(path, json.ToJsonString());
    }

    /// <summary>Rewrites the teacher's weights, removing or replacing tensors.</summary>
    static void EditWeights(string teacher, Action<Dictionary<string, Tensor>> edit)
    {
        using var scope = NewDisposeScope();
        var weights = TinyModels.RandomWeights(TinyModels.Llama3Gqa, seed: 1);
        edit(weights);
        File.Delete(Path.Combine(teacher, "model.safetensors"));
        CheckpointWriter.Write(teacher, weights.Select(e => (e.Key, e.Value)), long.MaxValue);
    }

    public static TheoryData<string, string, string[]> BadInputs => new()
    {
        { "non-Llama architecture", "gpt2", ["config.json", "'gpt2'", "Llama-family"] },
        { "already a student", "comba", ["config.json", "already a Comba student"] },
        { "missing k_proj", "no-k", ["model.safetensors", "missing attention projection", "model.layers.1.self_attn.k_proj.weight"] },
        { "missing o_proj and an MLP weight", "no-o", ["missing attention projection", "model.layers.0.self_attn.o_proj.weight"] },
        { "missing MLP weight", "no-mlp", ["missing tensor model.layers.0.mlp.up_proj.weight"] },
        { "KV heads in config.json do not match k_proj", "kv-heads", ["model.layers.0.self_attn.k_proj.weight", "num_key_value_heads (3)", "head counts"] },
        { "query heads not a multiple of KV heads", "heads-ratio", ["config.json", "num_attention_heads", "inconsistent"] },
        { "truncated file", "truncated", ["model.safetensors", "past the end of the file"] },
        { "garbage header", "garbage", ["model.safetensors", "header"] },
        { "integer weights", "int", ["model.norm.weight", "floating point"] },
        { "a tensor of another architecture", "extra", ["unexpected tensor transformer.h.0.attn.c_attn.weight", "another architecture"] },
        { "config.json is not JSON", "bad-json", ["config.json", "not valid JSON"] },
        { "no config beside a bare file", "bare", ["weights.safetensors", "--config"] },
        { "missing input", "nothing", ["no such file or folder"] },
    };

    [Theory]
    [MemberData(nameof(BadInputs))]
    public void Bad_input_fails_with_a_clear_error_and_no_output(string label, string kind, string[] expectedInMessage)
    {
        using var temp = new TempDir();
        var teacher = Teacher(temp);
        var from = teacher;
        var weights = Path.Combine(teacher, "model.safetensors");
        switch (kind)
        {
            case "gpt2" or "comba": EditConfig(teacher, j => j["model_type"] = kind); break;
            case "no-k": EditWeights(teacher, w => w.Remove("model.layers.1.self_attn.k_proj.weight")); break;
            case "no-o": EditWeights(teacher, w => { w.Remove("model.layers.0.self_attn.o_proj.weight"); w.Remove("model.layers.0.mlp.up_proj.weight"); }); break;
            case "no-mlp": EditWeights(teacher, w => w.Remove("model.layers.0.mlp.up_proj.weight")); break;
            case "kv-heads": EditConfig(teacher, j => j["num_key_value_heads"] = 3); break;
            case "heads-ratio": EditConfig(teacher, j => j["num_key_value_heads"] = 4); break;
            case "truncated": using (var f = new FileStream(weights, FileMode.Open, FileAccess.Write)) f.SetLength(f.Length / 2); break;
            case "garbage": File.WriteAllBytes(weights, [16, 0, 0, 0, 0, 0, 0, 0, .. "{not json at all"u8.ToArray(), 1, 2, 3]); break;
            case "int": EditWeights(teacher, w => w["model.norm.weight"] = ones(48, ScalarType.Int32)); break;
            case "extra": EditWeights(teacher, w => w["transformer.h.0.attn.c_attn.weight"] = ones(2, 2)); break;
            case "bad-json": File.WriteAllText(Path.Combine(teacher, "config.json"), "{ \"model_type\": "); break;
            case "bare":
                Directory.CreateDirectory(temp["bare"]);
                File.Copy(weights, temp["bare/weights.safetensors"]);
                from = temp["bare/weights.safetensors"];
                break;
            case "nothing": from = temp["no-such-folder"]; break;
        }
        var before = Directory.EnumerateFileSystemEntries(temp.Path).Select(Path.GetFileName).ToArray();

        var e = Assert.Throws<InvalidInputException>(() => CombaConverter.Convert(from, temp["student"], new ConversionOptions(), cancellationToken: Ct));
        foreach (var expected in expectedInMessage) Assert.True(e.Message.Contains(expected), $"{label}: '{e.Message}' does not mention '{expected}'");
        AssertOnly(temp, before!);
    }

    [Fact]
    public void Bad_comba_options_and_keep_attention_fail_before_anything_is_written()
    {
        using var temp = new TempDir();
        var teacher = Teacher(temp);
        Assert.Contains("comba_chunk_size", Assert.Throws<InvalidInputException>(() => CombaConverter.Convert(teacher, temp["student"],
            new ConversionOptions { Comba = new CombaDistill.Modeling.Comba.CombaConfig { ChunkSize = 48 } }, cancellationToken: Ct)).Message);
        Assert.Contains("layer 9 does not exist", Assert.Throws<InvalidInputException>(() => CombaConverter.Convert(teacher, temp["student"],
            new ConversionOptions { KeepAttention = "0,9" }, cancellationToken: Ct)).Message);
        AssertOnly(temp, "teacher");
    }
}

/// <summary>The conversion benchmark's bookkeeping, on a teacher small enough for a test (no timing assertions).</summary>
public class ConversionBenchmarkTests
{
    [Fact]
    public void Benchmark_reaches_the_target_size_reports_consistent_numbers_and_cleans_up()
    {
        using var temp = new TempDir();
        var shape = TinyModels.Llama3Gqa with { VocabSize = 1000, TorchDtype = "bfloat16" };
        var result = ConversionBenchmark.Run(temp["work"], targetBytes: 600_000, shape: shape, cancellationToken: TestContext.Current.CancellationToken);

        var perLayer = 2 * (2L * 48 * 48 + 2L * 48 * 16 + 3L * 48 * 80 + 2 * 48);
        var fixedBytes = 2 * (2L * 1000 * 48 + 48);
        Assert.Equal((int)Math.Ceiling((600_000.0 - fixedBytes) / perLayer), result.Layers);
        Assert.True(result.CheckpointBytes >= 600_000);
        // the files hold the tensors plus their headers
        Assert.InRange(result.CheckpointBytes - (fixedBytes + result.Layers * perLayer), 1, 100_000);
        Assert.True(result.StudentBytes > fixedBytes + result.Layers * perLayer);
        Assert.True(result.CopySeconds > 0 && result.ConvertSeconds > 0);
        // (the peak is reported as at least the resident size before converting, so only their presence is checked)
        if (OperatingSystem.IsLinux()) Assert.True(result.ResidentBeforeBytes > 0 && result.PeakResidentBytes > 0);
        Assert.Empty(Directory.EnumerateFileSystemEntries(temp["work"]));
        var shared = result.ToReport();
        Assert.Equal(result.WithinLimit, shared.WithinBounds);
        Assert.Equal(result.ConvertSeconds, (double)shared.Rows[1]["seconds"]!);
    }
}
