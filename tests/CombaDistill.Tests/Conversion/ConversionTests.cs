using System.Text.Json.Nodes;
using CombaDistill.Conversion;
using CombaDistill.IO;
using CombaDistill.Modeling;
using CombaDistill.Modeling.Comba;
using CombaDistill.Modeling.Llama;
using CombaDistill.Tests.Modeling;
using CombaDistill.Tests.Support;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Conversion;

/// <summary>Teachers of every supported shape convert, reload, and keep every teacher tensor bitwise.</summary>
public class ConversionTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>Every tensor of the teacher checkpoint (except those a converter drops) is in the student with the same dtype, shape and bytes.</summary>
    static void AssertTeacherTensorsCopiedBitwise(string teacherFolder, string studentFolder, IReadOnlyCollection<string> dropped)
    {
        using var teacher = Checkpoint.Open(teacherFolder);
        using var student = Checkpoint.Open(studentFolder);
        var compared = 0;
        foreach (var name in teacher.Names.Except(dropped))
        {
            var (dtype, shape, bytes) = TeacherFolders.Raw(teacher, name);
            var (studentDtype, studentShape, studentBytes) = TeacherFolders.Raw(student, name);
            Assert.Equal(dtype, studentDtype);
            Assert.Equal(shape, studentShape);
            Assert.True(bytes.AsSpan().SequenceEqual(studentBytes), $"{name} differs from the teacher's bytes");
            compared++;
        }
        Assert.True(compared > 0);
        foreach (var name in dropped) Assert.False(student.Contains(name), $"{name} should have been dropped");
    }

    [Fact]
    public void Stories260K_converts_reloads_and_keeps_every_teacher_tensor_bitwise()
    {
        using var temp = new TempDir();
        var teacherFolder = TeacherFolders.ImportStories260K(temp["teacher"]);
        var studentFolder = temp["student"];
        var report = CombaConverter.Convert(teacherFolder, studentFolder, new ConversionOptions(), cancellationToken: Ct);

        Assert.Equal(
            ["config.json", "conversion_report.json", "model.safetensors", "tokenizer.bin", "tokenizer.model", "tokenizer_config.json"],
            Directory.GetFiles(studentFolder).Select(f => Path.GetFileName(f)!).Order(StringComparer.Ordinal).ToArray());
        Assert.Equal(report.Files, Directory.GetFiles(studentFolder).Select(f => Path.GetFileName(f)!).Order(StringComparer.Ordinal).ToList());
        Assert.Equal(File.ReadAllBytes(Path.Combine(teacherFolder, "tokenizer.bin")), File.ReadAllBytes(Path.Combine(studentFolder, "tokenizer.bin")));
        AssertTeacherTensorsCopiedBitwise(teacherFolder, studentFolder, []);

        var config = CombaStudentConfig.Load(Path.Combine(studentFolder, "config.json"));
        Assert.Equal(LlamaConfig.Load(Path.Combine(teacherFolder, "config.json")), config.Architecture, new ArchitectureComparer());
        Assert.Empty(config.AttentionLayers);
        Assert.Equal(ConversionOptions.DefaultComba, config.Comba);

        using var student = Assert.IsType<CombaForCausalLM>(CausalLMLoader.Load(studentFolder));
        Assert.All(student.model.layers, l => Assert.IsType<CombaAttention>(l.self_attn));
        Assert.Equal(report.StudentParameters, student.parameters().Sum(p => p.numel()));
        using var logits = student.forward(tensor(new long[] { 1, 403, 407, 261, 378 }, [1, 5]));
        Assert.Equal([1, 5, 512], logits.shape);
        Assert.True(logits.isfinite().all().item<bool>());
    }

    /// <summary>Compares architectures field by field (records holding arrays compare those by reference).</summary>
    sealed class ArchitectureComparer : IEqualityComparer<LlamaConfig>
    {
        public bool Equals(LlamaConfig? a, LlamaConfig? b) =>
            a is not null && b is not null && a.EosTokenIds.SequenceEqual(b.EosTokenIds) && (a with { EosTokenIds = [] }) == (b with { EosTokenIds = [] });
        public int GetHashCode(LlamaConfig c) => c.HiddenSize;
    }

    [Fact]
    public void Sharded_bf16_gqa_teacher_converts_to_a_sharded_bf16_student_with_bitwise_copies()
    {
        using var temp = new TempDir();
        var teacherConfig = TinyModels.Llama3Gqa with { NumHiddenLayers = 3 };
        var teacherFolder = TeacherFolders.WriteRandom(temp["teacher"], teacherConfig, seed: 11, ScalarType.BFloat16, maxShardBytes: 12_000);
        Assert.True(File.Exists(Path.Combine(teacherFolder, Checkpoint.IndexFileName)));
        var studentFolder = temp["student"];

        // the index file itself as --from
        var report = CombaConverter.Convert(Path.Combine(teacherFolder, Checkpoint.IndexFileName), studentFolder,
            new ConversionOptions { MaxShardBytes = 16_000 }, cancellationToken: Ct);

        Assert.True(File.Exists(Path.Combine(studentFolder, Checkpoint.IndexFileName)));
        Assert.True(Directory.GetFiles(studentFolder, "model-*-of-*.safetensors").Length > 1);
        Assert.Equal("bfloat16", report.DType);
        AssertTeacherTensorsCopiedBitwise(teacherFolder, studentFolder, []);
        using (var written = Checkpoint.Open(studentFolder))
        {
            Assert.All(written.Names, n => Assert.Equal("BF16", written.Info(n).DType));
            // GQA stays at the teacher's KV width: k_proj is (2 heads × 8) × 48
            Assert.Equal([16, 48], written.Info("model.layers.0.self_attn.k_proj.weight").Shape);
            Assert.Equal([6], written.Info("model.layers.0.self_attn.A_log").Shape);
        }

        using var student = CombaForCausalLM.FromPretrained(studentFolder);
        Assert.Equal(ScalarType.BFloat16, student.model.embed_tokens.weight!.dtype);
        using var logits = student.forward(tensor(TinyModels.RandomIds(teacherConfig, 7, seed: 1), [1, 7]));
        Assert.True(logits.isfinite().all().item<bool>());
    }

    [Fact]
    public void Qwen2_with_biases_and_tied_embeddings_converts_dropping_the_stored_head_copy_and_rotary_tables()
    {
        using var temp = new TempDir();
        var teacherConfig = TinyModels.Qwen2Tied;
        var teacherFolder = temp["teacher"];
        using (NewDisposeScope())
        {
            var weights = TinyModels.RandomWeights(teacherConfig, seed: 5);
            // Some exports store the tied head and old rotary tables; neither is a parameter.
            weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone();
            weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = arange(8, dtype: ScalarType.Float32);
            TeacherFolders.Write(teacherFolder, teacherConfig, weights, ScalarType.Float32);
        }
        var studentFolder = temp["student"];
        var report = CombaConverter.Convert(teacherFolder, studentFolder, new ConversionOptions { Comba = ConversionOptions.DefaultComba with { OutputNorm = true } }, cancellationToken: Ct);

        string[] dropped = ["lm_head.weight", "model.layers.0.self_attn.rotary_emb.inv_freq"];
        Assert.Equal(dropped, report.Dropped);
        AssertTeacherTensorsCopiedBitwise(teacherFolder, studentFolder, dropped);
        using (var written = Checkpoint.Open(studentFolder))
            Assert.True(written.Contains("model.layers.1.self_attn.q_proj.bias") && written.Contains("model.layers.1.self_attn.o_norm.weight"));

        using var student = CombaForCausalLM.FromPretrained(studentFolder);
        Assert.Null(student.lm_head);
        Assert.True(student.Config.QkvBias && !student.Config.OutputBias && student.Config.TieWordEmbeddings);
        Assert.Equal("qwen2", student.Config.ModelType);
        Assert.Equal([2, 3], student.Config.EosTokenIds);
    }

    /// <summary>With every layer kept as attention the student is the teacher: the conversion path itself loses nothing.</summary>
    [Fact]
    public void Keep_attention_all_gives_the_teachers_logits_exactly()
    {
        using var temp = new TempDir();
        foreach (var (name, teacherFolder) in new[]
        {
            ("stories260K", TeacherFolders.ImportStories260K(temp["stories"])),
            ("qwen2", TeacherFolders.WriteRandom(temp["qwen2"], TinyModels.Qwen2Tied, seed: 3)),
            ("gqa-bf16", TeacherFolders.WriteRandom(temp["gqa"], TinyModels.Llama3Gqa, seed: 4, ScalarType.BFloat16)),
        })
        {
            var studentFolder = temp[name + "-student"];
            var report = CombaConverter.Convert(teacherFolder, studentFolder, new ConversionOptions { KeepAttention = "all" }, cancellationToken: Ct);
            Assert.Equal(0, report.ExtraParameters);
            Assert.All(report.LayerMap, l => Assert.Equal("attention", l.Mixer));

            using var teacher = LlamaForCausalLM.FromPretrained(teacherFolder);
            using var student = CombaForCausalLM.FromPretrained(studentFolder);
            var ids = TinyModels.RandomIds(teacher.Config, 23, seed: 9);
            using var input = tensor(ids, [1, ids.Length]);
            using var expected = teacher.forward(input);
            using var actual = student.forward(input);
            Assert.True(expected.eq(actual).all().item<bool>(), $"{name}: logits differ by up to {(expected - actual).abs().max().item<float>()}");

            // and through the decoding state: the kept layers' KV caches
            using var state = student.NewDecodingState(1);
            using var cache = new KvCache(teacher.Config.NumHiddenLayers, 1);
            using var studentStep = student.forward(input, state);
            using var teacherStep = teacher.forward(input, cache);
            using var next = tensor(new long[] { 5 }, [1, 1]);
            using var a = student.forward(next, state);
            using var b = teacher.forward(next, cache);
            Assert.True(a.eq(b).all().item<bool>(), $"{name}: decode step differs");
        }
    }

    [Fact]
    public void Hybrid_keeps_the_named_layers_as_attention_and_the_report_maps_every_layer()
    {
        using var temp = new TempDir();
        var teacherConfig = TinyModels.Llama3Gqa with { NumHiddenLayers = 4 };
        var teacherFolder = TeacherFolders.WriteRandom(temp["teacher"], teacherConfig, seed: 21);
        var report = CombaConverter.Convert(teacherFolder, temp["student"], new ConversionOptions { KeepAttention = "0,3" }, cancellationToken: Ct);

        Assert.Equal([0, 3], report.AttentionLayers);
        Assert.Equal(["attention", "comba", "comba", "attention"], report.LayerMap.Select(l => l.Mixer));
        var comba = report.LayerMap[1];
        Assert.Equal(["k_proj.weight", "o_proj.weight", "q_proj.weight", "v_proj.weight"], comba.FromTeacher.Order(StringComparer.Ordinal));
        Assert.Equal(["A_log", "a_proj.weight", "b_proj.weight", "d", "dt_bias", "k_conv.weight", "lambda_logit", "q_conv.weight", "v_conv.weight"],
            comba.New.Order(StringComparer.Ordinal));
        Assert.Empty(report.LayerMap[0].New);
        Assert.Equal(0, report.LayerMap[0].ExtraParameters);

        // per layer: a_proj and b_proj 48 × 6 each, four per-head vectors of 6, convolutions (48 + 16 + 16) × 4
        const long perLayer = 2 * 48 * 6 + 4 * 6 + (48 + 16 + 16) * 4;
        Assert.Equal(perLayer, comba.ExtraParameters);
        Assert.Equal(2 * perLayer, report.ExtraParameters);
        Assert.Equal(report.ExtraParameters, report.NewTensors.Sum(t => t.Parameters));
        Assert.All(report.NewTensors, t => Assert.Equal(2, t.Layers));
        Assert.Equal(report.TeacherParameters, report.Parts.Sum(p => p.Teacher));
        Assert.Equal(report.StudentParameters, report.Parts.Sum(p => p.Student));

        using var student = CombaForCausalLM.FromPretrained(temp["student"]);
        Assert.Equal([true, false, false, true], student.model.layers.Select(l => l.IsAttention));
        Assert.Equal(report.StudentParameters, student.parameters().Sum(p => p.numel()));

        // the report on disk is the one returned
        var onDisk = ConversionReport.FromJson(File.ReadAllText(Path.Combine(temp["student"], ConversionReport.FileName)));
        Assert.Equal(report.ToJson(), onDisk.ToJson());
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(temp["student"], ConversionReport.FileName)))!;
        Assert.Equal(2 * perLayer, json["extra_parameters"]!.GetValue<long>());
    }

    [Fact]
    public void Dtype_option_converts_copied_tensors_and_bare_safetensors_with_config_elsewhere_converts()
    {
        using var temp = new TempDir();
        var teacherConfig = TinyModels.LinearRopeWithBias;
        var teacherFolder = TeacherFolders.WriteRandom(temp["teacher"], teacherConfig, seed: 8, ScalarType.BFloat16);
        // a bare file in one folder, its config in another
        Directory.CreateDirectory(temp["bare"]);
        File.Move(Path.Combine(teacherFolder, "model.safetensors"), temp["bare/weights.safetensors"]);

        var report = CombaConverter.Convert(temp["bare/weights.safetensors"], temp["student"],
            new ConversionOptions { DType = ScalarType.Float32 }, configPath: Path.Combine(teacherFolder, "config.json"), cancellationToken: Ct);

        Assert.Equal("float32", report.DType);
        using var teacher = Checkpoint.Open(temp["bare/weights.safetensors"]);
        using var student = Checkpoint.Open(temp["student"]);
        foreach (var name in teacher.Names)
        {
            Assert.Equal("F32", student.Info(name).DType);
            using var a = teacher.Read(name, ScalarType.Float32);
            using var b = student.Read(name);
            Assert.True(a.eq(b).all().item<bool>(), name);      // bf16 → f32 is exact
        }
        Assert.Equal("float32", CombaStudentConfig.Load(temp["student/config.json"]).Architecture.TorchDtype);
    }
}
