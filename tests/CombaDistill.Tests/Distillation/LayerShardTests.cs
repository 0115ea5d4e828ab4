using System.Diagnostics;
using System.Text.Json.Nodes;
using CombaDistill.Distillation;
using CombaDistill.IO;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests.Distillation;

/// <summary>
/// Stage 1 split by layer into independent shard jobs, then merged: on stories260K at the toy sizes of
/// <see cref="DistillationRunTests"/>, compared with one uninterrupted joint run of the same recipe.
/// </summary>
public sealed class LayerShardTests(LayerShardTests.Joint joint) : IClassFixture<LayerShardTests.Joint>, IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    /// <summary>
    /// The toy recipe with alignment gradients clipped at 0.05: its layers' gradient norms are 0.01–0.3, so clipping
    /// acts on some layers and not others, as a global clip would couple them.
    /// </summary>
    static string RecipeText
    {
        get
        {
            var text = DistillationRunTests.RecipeText();
            Assert.Single(text.Split("    eval_every: 100\n")[1..]);
            return text.Replace("    eval_every: 100\n", "    eval_every: 100\n    grad_clip: 0.05\n");
        }
    }

    /// <summary>The whole recipe (align, then kd) in one job: what the sharded runs must reproduce.</summary>
    public sealed class Joint : IDisposable
    {
        readonly TempDir dir = new();
        public string RecipePath { get; }
        public string RunFolder { get; }
        public RunSummary Summary { get; }

        public Joint()
        {
            TorchSharp.torch.set_num_threads(1);
            RecipePath = dir["recipe.yaml"];
            File.WriteAllText(RecipePath, RecipeText);
            RunFolder = dir["joint"];
            Summary = DistillationRun.Run(RecipeLoader.Load(RecipePath), RunFolder, new DistillOptions { TensorBoard = false });
        }

        public void Dispose() => dir.Dispose();
    }

    static readonly DistillOptions AlignOnly = new() { OnlyStage = "align", TensorBoard = false };

    static RunSummary RunIt(Recipe recipe, string run, DistillOptions options, IProgress<DistillationProgress>? progress = null) =>
        DistillationRun.Run(recipe, run, options, progress, TestContext.Current.CancellationToken);

    static void AssertSameWeights(string expectedFolder, string actualFolder)
    {
        using var expected = Checkpoint.Open(expectedFolder);
        using var actual = Checkpoint.Open(actualFolder);
        Assert.Equal(expected.Names.Order(), actual.Names.Order());
        foreach (var name in expected.Names)
        {
            using var e = expected.Read(name);
            using var a = actual.Read(name);
            Assert.True(e.dtype == a.dtype && e.allclose(a, rtol: 0, atol: 0), $"{name} differs between {expectedFolder} and {actualFolder}");
        }
    }

    sealed class Crash : Exception;

    sealed class CrashAt(long step) : IProgress<DistillationProgress>
    {
        public void Report(DistillationProgress p)
        {
            if (p.Note is null && p.Step == step) throw new Crash();
        }
    }

    sealed class Notes(List<string> notes) : IProgress<DistillationProgress>
    {
        public void Report(DistillationProgress p)
        {
            if (p.Note is not null) notes.Add(p.Note);
        }
    }

    [Fact]
    public void Shards_split_the_aligned_layers_into_contiguous_blocks_covering_each_once()
    {
        for (var layers = 1; layers <= 12; layers++)
        {
            var aligned = Enumerable.Range(0, layers + 2).Where(l => l != 1 && l != layers).Take(layers).ToArray();   // gaps, as kept attention layers leave
            for (var count = 1; count <= layers; count++)
            {
                var blocks = Enumerable.Range(0, count).Select(i => new LayerShard(i, count).Layers(aligned)).ToArray();
                Assert.Equal(aligned, blocks.SelectMany(b => b));
                Assert.True(blocks.Max(b => b.Count) - blocks.Min(b => b.Count) <= 1, $"{layers} layers in {count} shards: sizes {string.Join(",", blocks.Select(b => b.Count))}");
                Assert.All(blocks, b => Assert.NotEmpty(b));
            }
            var e = Assert.Throws<InvalidInputException>(() => new LayerShard(0, layers + 1).Layers(aligned));
            Assert.Contains($"at most {layers} shards", e.Message);
        }
        Assert.Equal([0, 1, 2], new LayerShard(0, 2).Layers([0, 1, 2, 3, 4]));
        Assert.Equal([3, 4], new LayerShard(1, 2).Layers([0, 1, 2, 3, 4]));

        Assert.Equal(new LayerShard(3, 4), LayerShard.Parse("3/4"));
        foreach (var bad in new[] { "4/4", "-1/2", "1", "a/2", "0/0", "1/2/3" })
            Assert.Contains("is not I/N", Assert.Throws<ArgumentException>(() => LayerShard.Parse(bad)).Message);
    }

    [Fact]
    public void Two_shard_jobs_then_the_merge_give_the_same_student_as_one_job()
    {
        var recipe = RecipeLoader.Load(joint.RecipePath);
        var run = dir["sharded"];
        DistillationRun.Prepare(recipe, run, cancellationToken: TestContext.Current.CancellationToken);
        DistillationRun.Prepare(recipe, run, cancellationToken: TestContext.Current.CancellationToken);   // idempotent

        // shard 1 first (the jobs are independent); shard 0 is killed at step 5 and resumed from its step-4 checkpoint
        RunIt(recipe, run, AlignOnly with { Shard = new LayerShard(1, 2) });
        Assert.Throws<Crash>(() => RunIt(recipe, run, AlignOnly with { Shard = new LayerShard(0, 2) }, new CrashAt(5)));
        var shard0 = Path.Combine(run, "01-align", "shards", "0-of-2");
        Assert.Equal([2L, 4L], StageCheckpoints.List(Path.Combine(shard0, "checkpoints")).Select(c => c.Step));
        var notes = new List<string>();
        RunIt(recipe, run, AlignOnly with { Shard = new LayerShard(0, 2), Resume = true }, new Notes(notes));
        Assert.Contains(notes, n => n.Contains("resuming from step-00000004"));

        // each shard trained exactly its own layers' parameters
        foreach (var (name, layers) in new[] { ("0-of-2", new[] { 0, 1, 2 }), ("1-of-2", new[] { 3, 4 }) })
        {
            var result = Path.Combine(run, "01-align", "shards", name, "result");
            var manifest = JsonNode.Parse(File.ReadAllText(Path.Combine(result, "shard.json")))!;
            Assert.Equal(layers, manifest["layers"]!.AsArray().Select(n => n!.GetValue<int>()));
            using var weights = Checkpoint.Open(Path.Combine(result, "weights.safetensors"));
            Assert.NotEmpty(weights.Names);
            Assert.All(weights.Names, n => Assert.Contains(AlignmentShards.LayerOf(n)!.Value, layers));
            Assert.Null(StageCheckpoints.ChecksumProblem(result, ["weights.safetensors", "shard.json"]));
        }
        Assert.False(Directory.Exists(Path.Combine(run, "01-align", "student")));

        var merged = RunIt(recipe, run, AlignOnly with { MergeShards = true });
        Assert.Equal("", merged.StudentFolder);
        AssertSameWeights(Path.Combine(joint.RunFolder, "01-align", "student"), Path.Combine(run, "01-align", "student"));

        // the merged metrics read like the joint run's: combined losses per step, every layer's loss, and the same evaluations
        var (jointTrain, jointEvals) = StageMetrics.Read(Path.Combine(joint.RunFolder, "01-align", StageMetrics.FileName));
        var (mergedTrain, mergedEvals) = StageMetrics.Read(Path.Combine(run, "01-align", StageMetrics.FileName));
        Assert.Equal(jointTrain.Select(m => m.Step), mergedTrain.Select(m => m.Step));
        foreach (var (j, m) in jointTrain.Zip(mergedTrain))
        {
            Assert.Equal(j.Loss, m.Loss, 6);
            Assert.Equal(j.GradNorm, m.GradNorm, 6);
            Assert.Equal(j.LearningRate, m.LearningRate);
            Assert.Equal(j.LayerLosses!.Count, m.LayerLosses!.Count);
            foreach (var (jl, ml) in j.LayerLosses.Zip(m.LayerLosses)) Assert.Equal(jl, ml, 7);
        }
        foreach (var step in new[] { 0L, 6L })
        {
            var (j, m) = (jointEvals.Single(e => e.Step == step), mergedEvals.Single(e => e.Step == step));
            Assert.Equal(j.Alignment!.Value, m.Alignment!.Value, 7);
            Assert.Equal(j.StudentCrossEntropy, m.StudentCrossEntropy, 6);
        }

        // stage 2 and the final student follow as in one job
        var summary = RunIt(recipe, run, new DistillOptions { Resume = true, TensorBoard = false });
        Assert.Equal(["align", "kd"], summary.Stages.Select(s => s.Name));
        AssertSameWeights(Path.Combine(joint.RunFolder, "student"), Path.Combine(run, "student"));
        Assert.Equal(joint.Summary.StudentPerplexity, summary.StudentPerplexity, 6);
    }

    [Fact]
    public void The_merge_refuses_missing_unfinished_damaged_or_foreign_shards()
    {
        var recipe = RecipeLoader.Load(joint.RecipePath);
        var run = dir["sharded"];
        InvalidInputException MergeFails() => Assert.Throws<InvalidInputException>(() => RunIt(recipe, run, AlignOnly with { MergeShards = true }));

        // shard jobs need a prepared run folder, a stage named, and an alignment stage
        Assert.Contains("--prepare", Assert.Throws<InvalidInputException>(() => RunIt(recipe, run, AlignOnly with { Shard = new LayerShard(0, 2) })).Message);
        DistillationRun.Prepare(recipe, run, cancellationToken: TestContext.Current.CancellationToken);
        Assert.Contains("needs the stage", Assert.Throws<ArgumentException>(() => RunIt(recipe, run, new DistillOptions { Shard = new LayerShard(0, 2) })).Message);
        Assert.Contains("stage 'kd' is distillation", Assert.Throws<InvalidInputException>(() => RunIt(recipe, run, AlignOnly with { OnlyStage = "kd", MergeShards = true })).Message);
        Assert.Contains("at most 5 shards", Assert.Throws<InvalidInputException>(() => RunIt(recipe, run, AlignOnly with { Shard = new LayerShard(0, 6) })).Message);

        Assert.Contains("holds no shard", MergeFails().Message);
        RunIt(recipe, run, AlignOnly with { Shard = new LayerShard(0, 2) });
        Assert.Contains("1-of-2: is missing", MergeFails().Message);
        Assert.Throws<Crash>(() => RunIt(recipe, run, AlignOnly with { Shard = new LayerShard(1, 2) }, new CrashAt(3)));
        Assert.Contains("shard 1/2 has not finished", MergeFails().Message);
        // a joint run of the stage does not silently discard the shards
        Assert.Contains("merge them", Assert.Throws<InvalidInputException>(() => RunIt(recipe, run, AlignOnly)).Message);
        RunIt(recipe, run, AlignOnly with { Shard = new LayerShard(1, 2), Resume = true });

        var result0 = Path.Combine(run, "01-align", "shards", "0-of-2", "result");
        var weights = Path.Combine(result0, "weights.safetensors");
        var original = File.ReadAllBytes(weights);
        var flipped = (byte[])original.Clone();
        flipped[^5] ^= 0x10;
        File.WriteAllBytes(weights, flipped);
        Assert.Contains("shard 0/2's result is damaged (weights.safetensors does not match its SHA-256 checksum)", MergeFails().Message);
        File.WriteAllBytes(weights, original);

        // a shard made from another recipe (its checksums made consistent, as a copied-in folder's would be)
        var manifestPath = Path.Combine(result0, "shard.json");
        var manifest = File.ReadAllText(manifestPath);
        var sha = JsonNode.Parse(manifest)!["recipe_sha256"]!.GetValue<string>();
        File.WriteAllText(manifestPath, manifest.Replace(sha, new string('0', 64)));
        StageCheckpoints.WriteChecksums(result0, ["weights.safetensors", "shard.json"]);
        Assert.Contains("was trained from another recipe", MergeFails().Message);
        File.WriteAllText(manifestPath, manifest);
        StageCheckpoints.WriteChecksums(result0, ["weights.safetensors", "shard.json"]);

        // a stale folder of another split
        Directory.CreateDirectory(Path.Combine(run, "01-align", "shards", "0-of-3"));
        Assert.Contains("different splits (of 2, of 3)", MergeFails().Message);
        Directory.Delete(Path.Combine(run, "01-align", "shards", "0-of-3"));

        RunIt(recipe, run, AlignOnly with { MergeShards = true });
        AssertSameWeights(Path.Combine(joint.RunFolder, "01-align", "student"), Path.Combine(run, "01-align", "student"));
    }

    [Fact]
    public async Task The_CLI_runs_shard_jobs_as_separate_processes_at_the_same_time_and_merges_them()
    {
        var run = dir["cli"];
        string[] Args(params string[] extra) => ["distill", "--recipe", joint.RecipePath, "--run-dir", run, "--device", "cpu", "--threads", "1", "--no-tensorboard", .. extra];
        var (code, _, stderr) = CliProcess.Run(Args("--prepare"));
        Assert.True(code == 0, stderr);
        Assert.Contains("prepared:", stderr);

        // both shard jobs at once on the shared run folder, as an indexed job or a job array starts them
        var ct = TestContext.Current.CancellationToken;
        var jobs = new[] { "0/2", "1/2" }.Select(shard => Process.Start(CliProcess.StartInfo(Args("--stage", "align", "--shard", shard, "--resume")))!).ToArray();
        var outputs = jobs.Select(j => (Out: j.StandardOutput.ReadToEndAsync(ct), Err: j.StandardError.ReadToEndAsync(ct))).ToArray();
        foreach (var (job, output) in jobs.Zip(outputs))
        {
            await job.WaitForExitAsync(ct);
            Assert.True(job.ExitCode == 0, await output.Err);
            // the next step a shard job names is the merge, not --resume (which refuses unmerged shards)
            Assert.Contains("no final student yet: this job trained shard", await output.Out);
            Assert.Contains("--stage align --merge-shards", await output.Out);
            job.Dispose();
        }

        (code, _, stderr) = CliProcess.Run(Args("--stage", "kd", "--shard", "0/2"));
        Assert.Equal(2, code);
        Assert.Contains("error: ", stderr);
        Assert.Contains("stage 'kd' is distillation", stderr);

        (code, _, stderr) = CliProcess.Run(Args("--stage", "align", "--merge-shards"));
        Assert.True(code == 0, stderr);
        Assert.Contains("merging 2 shards", stderr);
        AssertSameWeights(Path.Combine(joint.RunFolder, "01-align", "student"), Path.Combine(run, "01-align", "student"));
    }
}
