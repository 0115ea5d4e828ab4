using System.Text.Json.Nodes;
using CombaDistill.Export;
using CombaDistill.IO;
using CombaDistill.Modeling;
using CombaDistill.Modeling.Comba;
using CombaDistill.Tests.Conversion;
using CombaDistill.Tests.Modeling;
using CombaDistill.Tests.Support;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Export;

/// <summary>The three students of <see cref="ExportStudents"/>, each saved and exported once for the tests of this class.</summary>
public sealed class ExportedStudents : IDisposable
{
    readonly TempDir temp = new();
    public Dictionary<string, string> Students { get; } = [];
    public Dictionary<string, string> Exports { get; } = [];
    public TempDir Temp => temp;

    public ExportedStudents()
    {
        foreach (var name in ExportStudents.Names)
        {
            Students[name] = ExportStudents.Write(name, temp, temp["student-" + name]);
            // the hybrid one is split into shards of at most 60 kB, so loading from an index is exercised too
            Exports[name] = HuggingFaceExport.Export(Students[name], temp[name], new ExportOptions { MaxShardBytes = name == "hybrid" ? 60_000 : 5_000_000_000 }, TestContext.Current.CancellationToken).Folder;
        }
        // COMBADISTILL_EXPORT_FIXTURES=DIR keeps copies of the students (how Data/export/ was made)
        if (Environment.GetEnvironmentVariable("COMBADISTILL_EXPORT_FIXTURES") is { Length: > 0 } keep)
            foreach (var (name, folder) in Students)
                CopyFolder(folder, Path.Combine(keep, name));
    }

    static void CopyFolder(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var file in Directory.GetFiles(from)) File.Copy(file, Path.Combine(to, Path.GetFileName(file)), overwrite: true);
    }

    public void Dispose() => temp.Dispose();
}

/// <summary><c>export</c>: what the folder holds, that plain PyTorch computes our numbers from it, the way back, and bad input.</summary>
public class ExportTests(ExportedStudents exported) : IClassFixture<ExportedStudents>
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>
    /// tools/check_export.py runs each export with combadistill_comba_core.py under plain PyTorch (Debian's 1.13 in CI)
    /// and saves its numbers; our own forward of the student folder must give the same: logits within 1e-4 (float32), the
    /// same 64 greedy tokens, the cache's token-by-token logits equal to our one-pass logits, the same loss, and the
    /// docs' plain-PyTorch snippet, run as written, the same tokens as our greedy decoding.
    /// </summary>
    [Fact]
    public void Plain_PyTorch_computes_our_logits_greedy_tokens_cached_steps_and_loss_from_each_export()
    {
        var python = ExportStudents.RequirePython();
        var output = exported.Temp["core-out"];
        var script = Path.Combine(Shared.RepoRoot, "tools", "check_export.py");
        var docs = Path.Combine(Shared.RepoRoot, "docs", "export.md");
        var (code, stdout, stderr) = ExportStudents.Run(python, [script, "--backend", "core", "--out", output, "--docs", docs, .. ExportStudents.Names.Select(n => exported.Exports[n])]);
        Assert.True(code == 0, $"check_export.py failed ({code}):\n{stdout}\n{stderr}");

        using var noGrad = no_grad();
        foreach (var name in ExportStudents.Names)
        {
            using var scope = NewDisposeScope();
            var file = Path.Combine(output, name + ".safetensors");
            using var student = CombaForCausalLM.FromPretrained(exported.Students[name], ScalarType.Float32);
            var ids = ExportStudents.Read(file, "input_ids");
            var ours = student.forward(ids);
            Assert.True(ours.abs().max().item<float>() > 0.5, $"{name}: logits too small for the comparison to mean anything");
            AssertClose(name + " logits", ExportStudents.Read(file, "logits_f32"), ours, 1e-4);
            AssertClose(name + " cached steps", ExportStudents.Read(file, "stepped_f32"), ours, 1e-4);

            var greedy = ExportStudents.Read(file, "greedy_ids");
            var prompt = ids[0].narrow(0, 0, 5).data<long>().ToArray();
            Assert.Equal(ExportStudents.Greedy(student, prompt, 64), greedy[0].data<long>().ToArray());

            var loss = ExportStudents.Read(file, "loss_f32").item<float>();
            Assert.Equal(ExportStudents.CausalLoss(ours, ExportStudents.Read(file, "labels")), loss, 1e-4);

            if (name == ExportStudents.Names[0])
                Assert.Equal(ExportStudents.Greedy(student, [1, 5, 17, 42], 16), ExportStudents.Read(file, "snippet_ids")[0].data<long>().ToArray());
        }
    }

    internal static void AssertClose(string what, Tensor actual, Tensor expected, double tolerance)
    {
        var difference = (actual.to(ScalarType.Float64) - expected.to(ScalarType.Float64)).abs().max().item<double>();
        Assert.True(difference <= tolerance, $"{what}: differ by {difference:E2} (tolerance {tolerance:E0})");
    }

    [Fact]
    public void The_folder_holds_our_model_type_auto_map_code_weights_tokenizer_generation_config_and_card()
    {
        var folder = exported.Exports["taylor"];
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "config.json")))!.AsObject();
        Assert.Equal("combadistill_comba", config["model_type"]!.GetValue<string>());
        Assert.Equal("CombaDistillForCausalLM", config["architectures"]![0]!.GetValue<string>());
        Assert.Equal("modeling_combadistill_comba.CombaDistillForCausalLM", config["auto_map"]!["AutoModelForCausalLM"]!.GetValue<string>());
        Assert.Equal("configuration_combadistill_comba.CombaDistillConfig", config["auto_map"]!["AutoConfig"]!.GetValue<string>());
        Assert.Equal("taylor", config["comba_feature_map"]!.GetValue<string>());
        Assert.Equal("float32", config["torch_dtype"]!.GetValue<string>());
        foreach (var file in HuggingFaceExport.PythonFiles)
            Assert.Equal(File.ReadAllText(Path.Combine(Shared.RepoRoot, "src", "CombaDistill.Training", "Export", "Python", file)), File.ReadAllText(Path.Combine(folder, file)));
        // the llama2.c import's tokenizer came along from the student
        Assert.True(File.Exists(Path.Combine(folder, "tokenizer.model")) && File.Exists(Path.Combine(folder, "tokenizer_config.json")));
        var generation = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "generation_config.json")))!;
        Assert.Equal(1, generation["bos_token_id"]!.GetValue<int>());
        Assert.Contains("Taylor", File.ReadAllText(Path.Combine(folder, "README.md")), StringComparison.OrdinalIgnoreCase);

        // sharded above the size limit: an index and every shard it names
        var hybrid = exported.Exports["hybrid"];
        var index = JsonNode.Parse(File.ReadAllText(Path.Combine(hybrid, Checkpoint.IndexFileName)))!;
        var shards = index["weight_map"]!.AsObject().Select(e => e.Value!.GetValue<string>()).Distinct().ToList();
        Assert.True(shards.Count > 1);
        Assert.All(shards, s => Assert.True(File.Exists(Path.Combine(hybrid, s))));
        Assert.False(File.Exists(Path.Combine(hybrid, Checkpoint.SingleFileName)));
        // nothing else is left beside the folder (the temporary sibling was renamed)
        Assert.Empty(Directory.GetFileSystemEntries(exported.Temp.Path, ".*"));
    }

    [Fact]
    public void A_bfloat16_export_stores_bfloat16_and_CombaDistill_reads_it_as_the_student_rounded()
    {
        using var temp = new TempDir();
        var result = HuggingFaceExport.Export(exported.Students["pure"], temp["bf16"], new ExportOptions { DType = ScalarType.BFloat16 }, Ct);
        Assert.Equal("bfloat16", result.DType);
        using var checkpoint = Checkpoint.Open(result.Folder);
        Assert.All(checkpoint.Names, n => Assert.Equal("BF16", checkpoint.Info(n).DType));
        using var scope = NewDisposeScope();
        using var original = Checkpoint.Open(exported.Students["pure"]);
        foreach (var name in original.Names)
            Assert.True(checkpoint.Read(name).to(ScalarType.Float32).eq(original.Read(name).to(ScalarType.BFloat16).to(ScalarType.Float32)).all().item<bool>(), name);
        var model = (CombaForCausalLM)CausalLMLoader.Load(result.Folder);
        Assert.Equal(ScalarType.BFloat16, model.parameters().First().dtype);
    }

    [Theory]
    [InlineData("bf16", "bfloat16")]
    [InlineData("FP16", "float16")]
    [InlineData("float", "float32")]
    public void The_command_line_takes_the_usual_spellings_of_a_dtype(string given, string stored)
    {
        using var temp = new TempDir();
        var (code, stdout, stderr) = CliProcess.Run("export", "--model", exported.Students["pure"], "--out", temp["x"], "--dtype", given, "--device", "cpu");
        Assert.True(code == 0, stderr);
        Assert.Contains($"parameters as {stored} to", stdout);
        Assert.Equal(stored, JsonNode.Parse(File.ReadAllText(Path.Combine(temp["x"], "config.json")))!["torch_dtype"]!.GetValue<string>());
    }

    /// <summary>
    /// convert takes an export back to a student folder with every tensor bit for bit and the same options; eval reads
    /// the export directly and measures what it measures on the student.
    /// </summary>
    [Fact]
    public void Convert_and_eval_take_an_export_and_the_round_trip_loses_nothing()
    {
        using var temp = new TempDir();
        var (name, student, export) = ("taylor", exported.Students["taylor"], exported.Exports["taylor"]);
        var back = CliProcess.Run("convert", "--from", export, "--out", temp["back"]);
        Assert.True(back.Code == 0, back.Stderr);
        Assert.Equal(CombaStudentConfig.Load(Path.Combine(student, "config.json")).ToJson().ToJsonString(),
            CombaStudentConfig.Load(Path.Combine(temp["back"], "config.json")).ToJson().ToJsonString());
        Assert.Equal("comba", CausalLMLoader.ModelTypeOf(temp["back"]));
        using (var a = Checkpoint.Open(student))
        using (var b = Checkpoint.Open(temp["back"]))
        {
            Assert.Equal(a.Names.Order(), b.Names.Order());
            foreach (var tensor in a.Names) Assert.True(TeacherFolders.Raw(a, tensor) is var x && TeacherFolders.Raw(b, tensor) is var y
                && x.DType == y.DType && x.Shape.SequenceEqual(y.Shape) && x.Bytes.SequenceEqual(y.Bytes), $"{name}: tensor {tensor} changed");
        }
        // over the export itself, even with --force: refused, and the export stays
        var over = CliProcess.Run("convert", "--from", export, "--out", export, "--force");
        Assert.Equal(2, over.Code);
        Assert.Contains("is the export being read", over.Stderr);
        Assert.Equal("combadistill_comba", CausalLMLoader.ModelTypeOf(export));
        // without --out it goes beside the export, as any convert does
        var copy = temp["copy-of-export"];
        foreach (var file in Directory.GetFiles(export)) { Directory.CreateDirectory(copy); File.Copy(file, Path.Combine(copy, Path.GetFileName(file))); }
        var beside = CliProcess.Run("convert", "--from", copy);
        Assert.True(beside.Code == 0, beside.Stderr);
        Assert.Equal("comba", CausalLMLoader.ModelTypeOf(copy + "-comba"));
        // conversion options make no sense for an export and are refused rather than ignored
        var withOption = CliProcess.Run("convert", "--from", export, "--out", temp["other"], "--feature-map", "identity");
        Assert.Equal(2, withOption.Code);
        Assert.Contains("--feature-map does not apply", withOption.Stderr);
        Assert.False(Directory.Exists(temp["other"]));

        string Nll(string model, string outFolder)
        {
            var run = CliProcess.Run("eval", "--model", model, "--tasks", "ppl", "--data", Shared.TinyStoriesValid, "--max-tokens", "256", "--out", outFolder, "--device", "cpu");
            Assert.True(run.Code == 0, run.Stderr);
            return JsonNode.Parse(File.ReadAllText(Path.Combine(outFolder, "report.json")))!["perplexity"]!["model"]!["nll"]!.ToJsonString();
        }
        Assert.Equal(Nll(student, temp["eval-student"]), Nll(export, temp["eval-export"]));
    }

    [Fact]
    public void Bad_input_gets_one_clear_line_and_leaves_no_folder()
    {
        using var temp = new TempDir();
        var teacher = TeacherFolders.WriteRandom(temp["teacher"], TinyModels.Llama3Gqa, seed: 5);
        var notStudent = CliProcess.Run("export", "--model", teacher, "--out", temp["a"]);
        Assert.Equal(2, notStudent.Code);
        Assert.Contains($"{Path.Combine(teacher, "config.json")}: field 'model_type' is 'llama': not a Comba student", notStudent.Stderr.ReplaceLineEndings(""));
        Assert.False(Directory.Exists(temp["a"]));

        var unknown = CliProcess.Run("export", "--model", exported.Students["pure"], "--out", temp["b"], "--bogus");
        Assert.NotEqual(0, unknown.Code);
        Assert.Contains("--bogus", unknown.Stderr);
        Assert.False(Directory.Exists(temp["b"]));

        var badType = CliProcess.Run("export", "--model", exported.Students["pure"], "--out", temp["c"], "--dtype", "int8");
        Assert.NotEqual(0, badType.Code);
        Assert.Contains("int8", badType.Stderr);

        var missing = CliProcess.Run("export", "--model", temp["nowhere"], "--out", temp["d"]);
        Assert.Equal(2, missing.Code);
        Assert.Contains("model folder does not exist", missing.Stderr);

        // an existing folder is replaced only with --force
        Directory.CreateDirectory(temp["e"]);
        File.WriteAllText(Path.Combine(temp["e"], "keep.txt"), "mine");
        var exists = CliProcess.Run("export", "--model", exported.Students["pure"], "--out", temp["e"]);
        Assert.Equal(2, exists.Code);
        Assert.Contains("exists and is not a model folder", exists.Stderr);
        Assert.Equal("mine", File.ReadAllText(Path.Combine(temp["e"], "keep.txt")));
        // and not even with it, when the folder is not a model folder: the user's file stays
        var forced = CliProcess.Run("export", "--model", exported.Students["pure"], "--out", temp["e"], "--force");
        Assert.Equal(2, forced.Code);
        Assert.Contains($"{temp["e"]}: is not a model folder (no config.json); --force replaces only a model folder (config.json and safetensors weights)", forced.Stderr.ReplaceLineEndings(""));
        Assert.Equal("mine", File.ReadAllText(Path.Combine(temp["e"], "keep.txt")));
        // an earlier export is a model folder: plain refused, replaced with --force
        Assert.Equal(0, CliProcess.Run("export", "--model", exported.Students["pure"], "--out", temp["g"]).Code);
        var again = CliProcess.Run("export", "--model", exported.Students["pure"], "--out", temp["g"]);
        Assert.Equal(2, again.Code);
        Assert.Contains("exists; use --force", again.Stderr);
        var replaced = CliProcess.Run("export", "--model", exported.Students["pure"], "--out", temp["g"], "--force");
        Assert.True(replaced.Code == 0, replaced.Stderr);
        Assert.True(File.Exists(Path.Combine(temp["g"], "config.json")));

        // a student missing a tensor is refused before anything is written
        var broken = temp["broken"];
        Directory.CreateDirectory(broken);
        File.Copy(Path.Combine(exported.Students["pure"], "config.json"), Path.Combine(broken, "config.json"));
        using (var scope = NewDisposeScope())
        using (var source = Checkpoint.Open(exported.Students["pure"]))
            CheckpointWriter.Write(broken, source.Names.Where(n => !n.EndsWith("layers.1.self_attn.lambda_logit")).Select(n => (n, source.Read(n))), long.MaxValue);
        var ex = Assert.Throws<InvalidInputException>(() => HuggingFaceExport.Export(broken, temp["f"], cancellationToken: Ct));
        Assert.Contains("lacks 1 tensor(s) of this student, e.g. 'model.layers.1.self_attn.lambda_logit'", ex.Message);
        Assert.False(Directory.Exists(temp["f"]));
    }

    [Fact]
    public void An_interrupted_export_leaves_neither_the_folder_nor_a_temporary_one()
    {
        using var temp = new TempDir();
        using var cancel = new CancellationTokenSource();
        cancel.Cancel();
        Assert.ThrowsAny<OperationCanceledException>(() => HuggingFaceExport.Export(exported.Students["pure"], temp["out"], cancellationToken: cancel.Token));
        Assert.Empty(Directory.GetFileSystemEntries(temp.Path));
    }

    /// <summary>A student inside a run folder: the card quotes the run's recipe, its perplexities, the eval table and the teacher.</summary>
    [Fact]
    public void The_model_card_quotes_the_teacher_recipe_run_results_and_eval_report()
    {
        using var temp = new TempDir();
        var run = temp["run"];
        Directory.CreateDirectory(Path.Combine(run, "eval"));
        File.Copy(Path.Combine(Shared.RepoRoot, "recipes", "stories260k.yaml"), Path.Combine(run, "recipe.yaml"));
        File.WriteAllText(Path.Combine(run, "summary.json"), """{"teacher_perplexity": 1.5, "student_perplexity": 1.545, "perplexity_ratio": 1.03, "validation_tokens": 8192, "seconds": 576}""");
        var studentFolder = Path.Combine(run, "student");
        Directory.CreateDirectory(studentFolder);
        foreach (var file in Directory.GetFiles(exported.Students["taylor"])) File.Copy(file, Path.Combine(studentFolder, Path.GetFileName(file)));
        var eval = CliProcess.Run("eval", "--model", studentFolder, "--tasks", "mqar", "--mqar-pairs", "2", "--mqar-lengths", "32", "--mqar-samples", "2",
            "--out", Path.Combine(run, "eval"), "--device", "cpu");
        Assert.True(eval.Code == 0, eval.Stderr);

        var result = HuggingFaceExport.Export(studentFolder, temp["export"], cancellationToken: Ct);
        Assert.Equal(run, result.RunFolder);
        var card = File.ReadAllText(Path.Combine(temp["export"], "README.md"));
        Assert.Contains("feature_map: taylor", card);                           // the recipe, verbatim
        Assert.Contains("| student held-out perplexity | 1.5450 |", card);
        Assert.Contains("| student ÷ teacher | 1.0300 |", card);
        Assert.Contains("MQAR", card);                                          // the eval report's table
        Assert.Matches(@"## Evaluation\n\n(?!#)", card);                       // under the card's heading, without the report's title
        Assert.DoesNotContain("# Evaluation report", card);
        Assert.DoesNotContain("Measured by `combadistill eval`", card);
        // stored in another dtype than the one eval ran on: the card says so
        HuggingFaceExport.Export(studentFolder, temp["export-bf16"], new ExportOptions { DType = ScalarType.BFloat16 }, Ct);
        Assert.Contains("on the student folder this export was made from (stored as float32), not on this export's bfloat16 weights",
            File.ReadAllText(Path.Combine(temp["export-bf16"], "README.md")));
        Assert.DoesNotContain("![", card);                                      // its plots are not in the export
        Assert.Contains("a pure Comba model", card);
        Assert.Contains("`comba_feature_map`: \"taylor\"", card);
        Assert.Contains("library_name: transformers", card);

        // the teacher's folder, as the conversion report recorded it
        var converted = temp["converted"];
        var teacher = TeacherFolders.WriteRandom(temp["teacher"], TinyModels.Llama3Gqa, seed: 9);
        Assert.Equal(0, CliProcess.Run("convert", "--from", teacher, "--out", converted).Code);
        HuggingFaceExport.Export(converted, temp["export2"], cancellationToken: Ct);
        var card2 = File.ReadAllText(Path.Combine(temp["export2"], "README.md"));
        Assert.Contains($"- source: `{Path.GetFileName(teacher)}`", card2);        // its name only: no local path in a card for publishing
        Assert.DoesNotContain(Path.GetFullPath(temp["teacher"]), card2);
        Assert.Contains("No distillation run or eval report", card2);
    }
}
