using CombaDistill.Distillation;
using CombaDistill.IO;
using CombaDistill.Modeling;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests.Distillation;

/// <summary>
/// Whole runs on stories260K at toy sizes (sequences of 32, micro-batches of 2, a handful of steps): jobs, stage
/// results, checkpoints and resuming. One uninterrupted run is shared as the reference trajectory.
/// </summary>
public sealed class DistillationRunTests(DistillationRunTests.Reference reference) : IClassFixture<DistillationRunTests.Reference>, IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    public static string RecipeText(string extraStage = "") => $"""
        seed: 5
        teacher:
          llama2c: {Shared.Stories260KBin}
          tokenizer: {Shared.Tok512Bin}
        student:
          convert: {"{"} chunk_size: 16 {"}"}
        data:
          train: {"{"} path: {Shared.TinyStoriesTrain}, max_tokens: 3000 {"}"}
          validation: {"{"} path: {Shared.TinyStoriesValid}, max_tokens: 300 {"}"}
          add_eos: false
          eval_tokens: 64
        stages:
          - name: align
            objective: attention_alignment
            optimizer: {"{"} lr: 3e-3 {"}"}
            schedule: {"{"} warmup_steps: 2 {"}"}
            steps: 6
            sequence_length: 32
            micro_batch: 2
            log_every: 1
            eval_every: 100
            checkpoint_every: 2
          - name: kd
            objective: distillation
            optimizer: {"{"} lr: 1e-3, weight_decay: 0.01 {"}"}
            schedule: {"{"} kind: constant, warmup_steps: 1 {"}"}
            steps: 7
            sequence_length: 32
            micro_batch: 2
            accumulation: 2
            temperature: 2
            ce_weight: 0.5
            log_every: 1
            eval_every: 3
            checkpoint_every: 2
            keep_checkpoints: 2
        {extraStage}
        """;

    /// <summary>The uninterrupted run every other test compares with.</summary>
    public sealed class Reference : IDisposable
    {
        readonly TempDir dir = new();
        public string RecipePath { get; }
        public string RunFolder { get; }
        public RunSummary Summary { get; }

        public Reference()
        {
            // One intra-op thread: these models are tiny, and on a shared 2-core machine two spinning threads are ~7× slower.
            TorchSharp.torch.set_num_threads(1);
            RecipePath = dir["recipe.yaml"];
            File.WriteAllText(RecipePath, RecipeText());
            RunFolder = dir["run"];
            Summary = DistillationRun.Run(RecipeLoader.Load(RecipePath), RunFolder, new DistillOptions());
        }

        public void Dispose() => dir.Dispose();
    }

    static RunSummary RunIt(Recipe recipe, string run, DistillOptions options, IProgress<DistillationProgress>? progress = null) =>
        DistillationRun.Run(recipe, run, options, progress, TestContext.Current.CancellationToken);

    static IReadOnlyList<TrainMetrics> Trajectory(string runFolder, string stage) =>
        StageMetrics.Read(Path.Combine(runFolder, stage, StageMetrics.FileName)).Train;

    static void AssertSameTrajectory(string expectedRun, string actualRun)
    {
        foreach (var stage in new[] { "01-align", "02-kd" })
        {
            var (expected, actual) = (Trajectory(expectedRun, stage), Trajectory(actualRun, stage));
            Assert.Equal(expected.Select(m => m.Step), actual.Select(m => m.Step));
            foreach (var (e, a) in expected.Zip(actual))
            {
                Assert.True(Math.Abs(e.Loss - a.Loss) <= 1e-6, $"{stage} step {e.Step}: loss {a.Loss} after resuming, {e.Loss} uninterrupted");
                Assert.Equal(e.LearningRate, a.LearningRate);
                Assert.Equal(e.Tokens, a.Tokens);
            }
        }
        using var expectedWeights = Checkpoint.Open(Path.Combine(expectedRun, "student"));
        using var actualWeights = Checkpoint.Open(Path.Combine(actualRun, "student"));
        foreach (var name in expectedWeights.Names)
        {
            using var e = expectedWeights.Read(name);
            using var a = actualWeights.Read(name);
            Assert.True(e.allclose(a, rtol: 0, atol: 1e-6), $"final {name} differs");
        }
    }

    sealed class Crash : Exception;

    /// <summary>Progress that throws (as a kill would stop the process: nothing saved) once a stage reaches a step.</summary>
    sealed class CrashAt(string stage, long step, List<string>? warnings = null) : IProgress<DistillationProgress>
    {
        public bool Armed { get; set; } = true;
        public void Report(DistillationProgress p)
        {
            if (p.IsWarning) warnings?.Add(p.Note!);
            if (Armed && p.Note is null && p.Stage == stage && p.Step == step) throw new Crash();
        }
    }

    string WriteRecipe(string text)
    {
        var path = dir["recipe.yaml"];
        File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public void A_run_writes_stage_results_metrics_plots_and_a_final_student()
    {
        var run = reference.RunFolder;
        var summary = reference.Summary;
        Assert.Equal(["align", "kd"], summary.Stages.Select(s => s.Name));
        Assert.Equal([6L, 7L], summary.Stages.Select(s => s.Steps));
        Assert.Equal(7 * 32 * 2 * 2, summary.Stages[1].Tokens);
        foreach (var stage in new[] { "01-align", "02-kd" })
        {
            Assert.True(StudentFolder.IsComplete(Path.Combine(run, stage, "student")));
            var png = File.ReadAllBytes(Path.Combine(run, stage, "loss.png"));
            Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, png[..4]);
            Assert.NotEmpty(Directory.GetFiles(Path.Combine(run, "tensorboard", stage[3..]), "events.out.tfevents.*"));
        }
        // keep_checkpoints: 2 of kd's checkpoints at steps 2, 4, 6 remain; align keeps 3 (2, 4) — none at the last step
        Assert.Equal([4L, 6L], StageCheckpoints.List(Path.Combine(run, "02-kd", "checkpoints")).Select(c => c.Step));
        Assert.Equal([2L, 4L], StageCheckpoints.List(Path.Combine(run, "01-align", "checkpoints")).Select(c => c.Step));

        // the final student is a normal student folder whose perplexity the summary reports
        using var student = CombaDistill.Modeling.Comba.CombaForCausalLM.FromPretrained(summary.StudentFolder);
        var validation = TokenFile.Read(Path.Combine(run, "data", "validation.tokens"), 512);
        Assert.Equal(300, validation.Length);
        var (ce, tokens) = Perplexity.CrossEntropy(student, validation, summary.EvalSequenceLength, cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(summary.ValidationTokens, tokens);
        Assert.Equal(summary.StudentPerplexity, Math.Exp(ce), 5);
        Assert.True(summary.TeacherPerplexity < summary.StudentPerplexity);
        Assert.True(File.Exists(Path.Combine(run, DistillationRun.SummaryFile)));

        // alignment is measured before the first step and falls
        var align = summary.Stages[0];
        Assert.True(align.Last!.Alignment < align.First!.Alignment);
        Assert.Equal(0, align.First.Step);
    }

    [Fact]
    public void A_run_killed_mid_stage_and_resumed_follows_the_same_trajectory()
    {
        var recipe = RecipeLoader.Load(WriteRecipe(RecipeText()));
        var run = dir["run"];
        Assert.Throws<Crash>(() => RunIt(recipe, run, new DistillOptions(), new CrashAt("kd", 5)));
        Assert.False(Directory.Exists(Path.Combine(run, "student")));
        Assert.Equal([2L, 4L], StageCheckpoints.List(Path.Combine(run, "02-kd", "checkpoints")).Select(c => c.Step));

        var notes = new List<string>();
        RunIt(recipe, run, new DistillOptions { Resume = true }, new Progress(notes));
        Assert.Contains(notes, n => n.Contains("'align' already finished"));
        Assert.Contains(notes, n => n.Contains("resuming from step-00000004"));
        AssertSameTrajectory(reference.RunFolder, run);
    }

    [Fact]
    public void A_corrupted_newest_checkpoint_is_skipped_with_a_warning()
    {
        var recipe = RecipeLoader.Load(WriteRecipe(RecipeText()));
        var run = dir["run"];
        Assert.Throws<Crash>(() => RunIt(recipe, run, new DistillOptions(), new CrashAt("align", 5)));
        var newest = StageCheckpoints.PathOf(Path.Combine(run, "01-align", "checkpoints"), 4);
        var weights = Path.Combine(newest, StageCheckpoints.WeightsFile);
        var bytes = File.ReadAllBytes(weights);
        bytes[^3] ^= 0x40;
        File.WriteAllBytes(weights, bytes);
        Assert.Contains("does not match its SHA-256", StageCheckpoints.Problem(newest));

        var warnings = new List<string>();
        var notes = new List<string>();
        RunIt(recipe, run, new DistillOptions { Resume = true }, new Progress(notes, warnings));
        Assert.Contains(warnings, w => w.Contains("step-00000004") && w.Contains("damaged"));
        Assert.Contains(notes, n => n.Contains("resuming from step-00000002"));
        AssertSameTrajectory(reference.RunFolder, run);
    }

    [Fact]
    public void Cancellation_saves_a_checkpoint_and_resumes_exactly()
    {
        var recipe = RecipeLoader.Load(WriteRecipe(RecipeText()));
        var run = dir["run"];
        using var cancel = new CancellationTokenSource();
        var stopper = new Stopper(cancel, "kd", 3);
        Assert.ThrowsAny<OperationCanceledException>(() => DistillationRun.Run(recipe, run, new DistillOptions(), stopper, cancel.Token));
        // step 3 is no checkpoint interval: the cancellation saved it
        Assert.Contains(3L, StageCheckpoints.List(Path.Combine(run, "02-kd", "checkpoints")).Select(c => c.Step));
        RunIt(recipe, run, new DistillOptions { Resume = true });
        AssertSameTrajectory(reference.RunFolder, run);
    }

    sealed class Stopper(CancellationTokenSource cancel, string stage, long step) : IProgress<DistillationProgress>
    {
        public void Report(DistillationProgress p)
        {
            if (p.Note is null && p.Stage == stage && p.Step == step) cancel.Cancel();
        }
    }

    sealed class Progress(List<string> notes, List<string>? warnings = null) : IProgress<DistillationProgress>
    {
        public void Report(DistillationProgress p)
        {
            if (p.Note is null) return;
            (p.IsWarning ? warnings ?? notes : notes).Add(p.Note);
        }
    }

    [Fact]
    public void A_stage_refuses_to_start_without_its_predecessors_result()
    {
        var recipe = RecipeLoader.Load(WriteRecipe(RecipeText()));
        var run = dir["run"];
        Assert.Throws<Crash>(() => RunIt(recipe, run, new DistillOptions(), new CrashAt("align", 1)));
        var e = Assert.Throws<InvalidInputException>(() => RunIt(recipe, run, new DistillOptions { OnlyStage = "kd" }));
        Assert.Contains("stage 'kd' cannot start: its predecessor 'align' has no result", e.Message);
        Assert.False(Directory.Exists(Path.Combine(run, "02-kd")));

        // with align done, kd alone runs; redoing align then drops kd's result and the final student made from the old one
        RunIt(recipe, run, new DistillOptions { OnlyStage = "align" });
        var summary = RunIt(recipe, run, new DistillOptions { OnlyStage = "kd" });
        Assert.Equal(["kd"], summary.Stages.Select(s => s.Name));
        Assert.True(StudentFolder.IsComplete(Path.Combine(run, "student")));
        RunIt(recipe, run, new DistillOptions { OnlyStage = "align" });
        Assert.False(Directory.Exists(Path.Combine(run, "02-kd", "student")));
        Assert.False(Directory.Exists(Path.Combine(run, "student")));
        Assert.True(StudentFolder.IsComplete(Path.Combine(run, "01-align", "student")));
    }

    [Fact]
    public void A_run_folder_is_not_reused_silently()
    {
        var path = WriteRecipe(RecipeText());
        var recipe = RecipeLoader.Load(path);
        Assert.Contains("pass --resume", Assert.Throws<InvalidInputException>(() => RunIt(recipe, reference.RunFolder, new DistillOptions())).Message);

        var run = dir["run"];
        Assert.Throws<Crash>(() => RunIt(recipe, run, new DistillOptions(), new CrashAt("align", 1)));
        File.WriteAllText(path, RecipeText().Replace("seed: 5", "seed: 6"));
        var e = Assert.Throws<InvalidInputException>(() => RunIt(RecipeLoader.Load(path), run, new DistillOptions { Resume = true }));
        Assert.Contains("the recipe this run was started with", e.Message);
        Assert.Contains("not a run folder", Assert.Throws<InvalidInputException>(() => RunIt(recipe, dir["other"], new DistillOptions { Resume = true })).Message);
    }

    [Fact]
    public void A_from_scratch_baseline_shares_no_weight_with_the_teacher()
    {
        var text = RecipeText().Replace("convert: { chunk_size: 16 }", "convert: { chunk_size: 16 }\n  from_scratch: true");
        var stages = text.IndexOf("stages:", StringComparison.Ordinal);
        text = text[..stages] + """
            stages:
              - name: scratch
                objective: fine_tuning
                steps: 2
                sequence_length: 32
                micro_batch: 2
            """;
        var recipe = RecipeLoader.Load(WriteRecipe(text));
        Assert.True(recipe.Student.FromScratch);
        var run = dir["run"];
        var summary = RunIt(recipe, run, new DistillOptions { TensorBoard = false });
        Assert.True(File.Exists(Path.Combine(run, "student-init", "FROM_SCRATCH")));
        using var teacher = Checkpoint.Open(Path.Combine(run, "teacher"));
        using var initial = Checkpoint.Open(Path.Combine(run, "student-init"));
        foreach (var name in teacher.Names)
        {
            using var t = teacher.Read(name);
            using var s = initial.Read(name);
            if (name.EndsWith("layernorm.weight") || name == "model.norm.weight") continue;   // norms start at ones either way
            Assert.False(t.allclose(s), $"{name} was taken from the teacher");
        }
        Assert.True(summary.StudentPerplexity > 2 * summary.TeacherPerplexity);
    }

    [Fact]
    public void ACheckpointWhoseChecksumsMatchButWhoseStateDoesNotLoadIsSkipped()
    {
        var recipe = RecipeLoader.Load(WriteRecipe(RecipeText()));
        var run = dir["run"];
        Assert.Throws<Crash>(() => RunIt(recipe, run, new DistillOptions(), new CrashAt("kd", 5)));
        // the newest checkpoint of the stage in progress gets an RNG state of the wrong size, with fresh checksums:
        // intact by its checksums, yet it cannot be restored
        var newest = StageCheckpoints.PathOf(Path.Combine(run, "02-kd", "checkpoints"), 4);
        var statePath = Path.Combine(newest, StageCheckpoints.StateFile);
        var state = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(statePath))!.AsObject();
        state["rng_state"] = Convert.ToBase64String([1, 2, 3]);
        File.WriteAllText(statePath, state.ToJsonString());
        StageCheckpoints.WriteChecksums(newest, [StageCheckpoints.WeightsFile, StageCheckpoints.OptimizerFile, StageCheckpoints.StateFile]);
        Assert.Null(StageCheckpoints.Problem(newest));
        // and the finished stage's log ends in a line a kill cut short
        File.AppendAllText(Path.Combine(run, "01-align", StageMetrics.FileName), "{\"kind\":\"train\",\"stage\":\"align\",\"st");

        var warnings = new List<string>();
        var notes = new List<string>();
        RunIt(recipe, run, new DistillOptions { Resume = true }, new Progress(notes, warnings));
        Assert.Contains(warnings, w => w.Contains("step-00000004") && w.Contains("rng_state"));
        Assert.Contains(notes, n => n.Contains("resuming from step-00000002"));
        AssertSameTrajectory(reference.RunFolder, run);
    }

    [Fact]
    public void DataThatIsNotUtf8TextIsRefusedBeforeTheRunFolderIsMade()
    {
        var binary = dir["train.txt"];
        File.WriteAllBytes(binary, [.. "Once upon a time"u8, 0xC3, 0x28, .. " there was"u8]);   // 0xC3 0x28: no UTF-8 sequence
        var text = RecipeText().Replace($"path: {Shared.TinyStoriesTrain}", $"path: {binary}");
        var recipe = RecipeLoader.Load(WriteRecipe(text));
        var run = dir["run"];
        var error = Assert.Throws<InvalidInputException>(() => RunIt(recipe, run, new DistillOptions()));
        Assert.Contains("train.txt: is not UTF-8 text (invalid byte 0xC3 at offset 16)", error.Message);
        Assert.False(Directory.Exists(run));

        File.WriteAllText(binary, "Once upon a time\0 there was");   // a NUL, as UTF-16 text or a binary file has
        Assert.Contains("holds a NUL character", Assert.Throws<InvalidInputException>(() => RunIt(recipe, run, new DistillOptions())).Message);
        Assert.False(Directory.Exists(run));
    }
}
