using System.Text.Json;
using CombaDistill.Distillation;
using CombaDistill.IO;
using CombaDistill.Runtime.Cuda;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests.Distillation;

/// <summary><c>bench distill</c>'s bookkeeping on the toy stories260K recipe (no assertion on speed itself).</summary>
public sealed class DistillationBenchmarkTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    Recipe Load()
    {
        var path = dir["recipe.yaml"];
        File.WriteAllText(path, DistillationRunTests.RecipeText());
        return RecipeLoader.Load(path);
    }

    [Fact]
    public void Each_stage_is_timed_over_its_own_steps_with_shares_from_probes_at_its_shapes_and_nothing_is_left_behind()
    {
        TorchSharp.torch.set_num_threads(1);
        var recipe = Load();
        var work = dir["work"];
        var steps = new List<(string Stage, long Step, long Total)>();
        var report = DistillationBenchmark.Run(recipe, work, new DistillBenchOptions { Steps = 3, Warmup = 2, ProbeRepeats = 2 },
            progress: new ImmediateProgress<DistillationProgress>(p => { if (p.Note is null) steps.Add((p.Stage, p.Step, p.TotalSteps)); }),
            cancellationToken: TestContext.Current.CancellationToken);

        Assert.Equal(["align", "kd"], report.Stages.Select(s => s.Stage));
        // warm-up + timed steps ran, whatever the recipe's own budget (6 and 7 steps)
        Assert.Equal(5, steps.Count(s => s.Stage == "align"));
        Assert.All(steps, s => Assert.Equal(5, s.Total));
        Assert.Equal("cpu", report.Device);
        foreach (var (s, stage) in report.Stages.Zip(recipe.Stages))
        {
            Assert.Equal(3, s.TimedSteps);
            Assert.Equal(stage.TokensPerStep, s.TokensPerStep);
            Assert.Equal(s.TokensPerStep / (s.StepMs / 1000), s.TokensPerSecond, 6);
            Assert.True(s.StepMs > 0 && s.TeacherForwardMs > 0 && s.CombaMs > 0);
            Assert.True(s.PeakResidentBytes > 0);
            Assert.Null(s.PeakDeviceBytes);
            Assert.Equal(stage.Accumulation, s.TeacherCallsPerStep);
            Assert.Equal(5 * stage.Accumulation, s.CombaCallsPerStep);        // five Comba layers per micro-batch
            Assert.Equal(s.CombaMs * s.CombaCallsPerStep / s.StepMs, s.CombaShare, 9);
            Assert.Equal(s.TeacherForwardMs * s.TeacherCallsPerStep / s.StepMs, s.TeacherShare, 9);
            Assert.Equal("(2, 8, 32, 8, 8)", s.CombaShape);                  // micro-batch 2, 8 heads, 32 tokens, head dim 8
            Assert.StartsWith("chunkwise (cpu is not a CUDA device", s.CombaPath);
            // one mixer and its parts, each timed alone at the stage's shapes
            Assert.Equal("mixer", s.MixerParts[0].Part);
            Assert.Contains(s.MixerParts, p => p.Part == "projections");
            Assert.All(s.MixerParts, p => Assert.True(p.Ms > 0, $"{s.Stage}: {p.Part} {p.Ms} ms"));
        }
        Assert.Equal("attention_alignment", report.Stages[0].Objective);
        // the phases of the timed steps, in step order (float32 on the CPU: no master copies), inside the measured step
        Assert.Equal(["teacher layers, student mixers forward and backward", "loss read, gradient average and clip", "AdamW"],
            report.Stages[0].Phases.Select(p => p.Phase));
        Assert.Equal(["teacher forward", "student forward", "heads and logit loss", "student backward", "loss read, gradient average and clip", "AdamW"],
            report.Stages[1].Phases.Select(p => p.Phase));
        foreach (var s in report.Stages)
        {
            Assert.All(s.Phases, p => Assert.True(p.MsPerStep >= 0, $"{s.Stage}: {p.Phase} {p.MsPerStep} ms"));
            var together = s.Phases.Sum(p => p.MsPerStep);
            Assert.True(together > 0 && together <= s.StepMs, $"{s.Stage}: phases {together} ms of a {s.StepMs} ms step");
        }
        Assert.False(Directory.Exists(work));
        // the shared result shape: one row per stage, the numbers unchanged
        var shared = report.ToReport();
        Assert.Equal(["align", "kd"], shared.Rows.Select(r => (string)r["stage"]!));
        Assert.Equal(report.Stages.Select(s => (object?)s.TokensPerSecond), shared.Rows.Select(r => r["tokensPerSecond"]));
        Assert.Contains("\"combaPath\"", JsonSerializer.Serialize(shared));
        Assert.Contains(shared.Notes, n => n.StartsWith("kd phases: teacher forward ", StringComparison.Ordinal));
        Assert.Contains(shared.Notes, n => n.StartsWith("align: one Comba mixer (self_attn) fwd+bwd ", StringComparison.Ordinal));
        var kdPhases = JsonDocument.Parse(JsonSerializer.Serialize(shared, new JsonSerializerOptions(JsonSerializerDefaults.Web))).RootElement.GetProperty("rows")[1].GetProperty("phasesMs");
        Assert.Equal(report.Stages[1].Phases.Select(p => p.Phase), kdPhases.EnumerateObject().Select(p => p.Name));
        Assert.Equal(report.Stages[1].Phases.Select(p => p.MsPerStep), kdPhases.EnumerateObject().Select(p => p.Value.GetDouble()));
    }

    [Fact]
    public void A_later_stage_alone_gets_one_step_of_each_earlier_one_and_bad_options_fail_first()
    {
        TorchSharp.torch.set_num_threads(1);
        var recipe = Load();
        var steps = new List<(string Stage, long Step)>();
        var report = DistillationBenchmark.Run(recipe, dir["work"], new DistillBenchOptions { Steps = 2, Warmup = 1, ProbeRepeats = 1, Stages = ["kd"] },
            progress: new ImmediateProgress<DistillationProgress>(p => { if (p.Note is null) steps.Add((p.Stage, p.Step)); }),
            cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(["kd"], report.Stages.Select(s => s.Stage));
        Assert.Equal([("align", 1L), ("kd", 1L), ("kd", 2L), ("kd", 3L)], steps);

        var unknown = Assert.Throws<InvalidInputException>(() => DistillationBenchmark.Run(recipe, dir["other"], new DistillBenchOptions { Stages = ["long"] }, cancellationToken: TestContext.Current.CancellationToken));
        Assert.Contains("no stage named 'long'", unknown.Message);
        Assert.Contains(recipe.SourcePath, unknown.Message);
        Assert.Contains("--warmup is 0", Assert.Throws<ArgumentException>(() => DistillationBenchmark.Run(recipe, dir["other"], new DistillBenchOptions { Warmup = 0 }, cancellationToken: TestContext.Current.CancellationToken)).Message);
        Directory.CreateDirectory(dir["busy"]);
        File.WriteAllText(dir["busy/file.txt"], "keep me");
        Assert.Contains("not empty", Assert.Throws<InvalidInputException>(() => DistillationBenchmark.Run(recipe, dir["busy"], new DistillBenchOptions(), cancellationToken: TestContext.Current.CancellationToken)).Message);
        Assert.Equal("keep me", File.ReadAllText(dir["busy/file.txt"]));
        Assert.False(Directory.Exists(dir["other"]));
    }

    [Fact]
    public void On_CUDA_the_benchmark_samples_device_memory_and_names_the_path_the_op_took()
    {
        Gpu.Require();
        var report = DistillationBenchmark.Run(Load(), dir["work"], new DistillBenchOptions { Steps = 2, Warmup = 1, ProbeRepeats = 1, Device = TorchSharp.torch.CUDA },
            cancellationToken: TestContext.Current.CancellationToken);
        Assert.All(report.Stages, s =>
        {
            Assert.True(s.PeakDeviceBytes > 0);
            Assert.True(s.StepMs > 0 && s.CombaMs > 0 && s.TeacherForwardMs > 0);
            // stories260K's heads have 8 dimensions, which the fused kernels do not take
            Assert.StartsWith("chunkwise (head dim 8", s.CombaPath);
        });
        Assert.StartsWith("cuda:0", report.Device);
    }
}
