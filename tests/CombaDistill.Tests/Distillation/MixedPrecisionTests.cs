using CombaDistill.Distillation;
using CombaDistill.IO;
using CombaDistill.Tests.Support;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Distillation;

/// <summary>
/// bf16 training with float32 master weights (<see cref="MixedPrecision"/>), on the CPU with the toy recipe: it follows
/// the float32 run's trajectory within bf16's precision, saves float32 students, leaves what a stage does not train
/// bit for bit, and resumes exactly.
/// </summary>
public sealed class MixedPrecisionTests : IClassFixture<MixedPrecisionTests.Runs>, IDisposable
{
    /// <summary>The toy recipe run once in float32 and once in bf16; the tests compare them.</summary>
    public sealed class Runs : IDisposable
    {
        readonly TempDir dir = new();
        public string Float32Run { get; }
        public string Bf16Run { get; }
        public RunSummary Float32 { get; }
        public RunSummary Bf16 { get; }
        public string Bf16Recipe { get; }

        /// <summary>A third stage with LoRA adapters, which stay float32 beside the bf16 working copies.</summary>
        const string Lora = """
              - name: lora
                objective: fine_tuning
                lora: { rank: 4, alpha: 8, targets: [q_proj, v_proj, up_proj] }
                optimizer: { lr: 3e-3 }
                steps: 4
                sequence_length: 32
                micro_batch: 2
                log_every: 1
            """;

        public Runs()
        {
            set_num_threads(1);
            var f32 = dir["f32.yaml"];
            File.WriteAllText(f32, DistillationRunTests.RecipeText(Lora));
            Bf16Recipe = dir["bf16.yaml"];
            File.WriteAllText(Bf16Recipe, "precision: bf16\n" + DistillationRunTests.RecipeText(Lora));
            Float32Run = dir["f32"];
            Bf16Run = dir["bf16"];
            Float32 = DistillationRun.Run(RecipeLoader.Load(f32), Float32Run, new DistillOptions { TensorBoard = false });
            Bf16 = DistillationRun.Run(RecipeLoader.Load(Bf16Recipe), Bf16Run, new DistillOptions { TensorBoard = false });
        }

        public void Dispose() => dir.Dispose();
    }

    readonly Runs runs;
    readonly TempDir dir = new();

    public MixedPrecisionTests(Runs runs) => this.runs = runs;

    public void Dispose() => dir.Dispose();

    static IReadOnlyList<TrainMetrics> Trajectory(string run, string stage) =>
        StageMetrics.Read(Path.Combine(run, stage, StageMetrics.FileName)).Train;

    [Fact]
    public void Bf16_follows_the_float32_trajectory_within_bf16_precision()
    {
        foreach (var stage in new[] { "01-align", "02-kd", "03-lora" })
        {
            var (f32, bf16) = (Trajectory(runs.Float32Run, stage), Trajectory(runs.Bf16Run, stage));
            Assert.Equal(f32.Select(m => m.Step), bf16.Select(m => m.Step));
            foreach (var (a, b) in f32.Zip(bf16))
                Assert.True(Math.Abs(a.Loss - b.Loss) <= 0.02 * Math.Abs(a.Loss), $"{stage} step {a.Step}: bf16 loss {b.Loss}, float32 {a.Loss}");
            // it trains: bf16 must not stall where float32 learns
            if (stage != "03-lora") Assert.True(bf16[^1].Loss < bf16[0].Loss, $"{stage}: bf16 loss {bf16[0].Loss} → {bf16[^1].Loss}");
        }
        Assert.Equal(runs.Float32.StudentPerplexity, runs.Bf16.StudentPerplexity, runs.Float32.StudentPerplexity * 0.01);   // measured on the CPU (align and kd stages alone): losses within 0.6%, perplexity 0.34%
    }

    [Fact]
    public void Bf16_saves_float32_students_whose_trained_weights_moved_like_float32s()
    {
        using var start = Checkpoint.Open(Path.Combine(runs.Bf16Run, "student-init"));
        using var f32 = Checkpoint.Open(Path.Combine(runs.Float32Run, "student"));
        using var bf16 = Checkpoint.Open(Path.Combine(runs.Bf16Run, "student"));
        double diff = 0, moved = 0;
        foreach (var name in f32.Names)
        {
            using var a = f32.Read(name);
            using var b = bf16.Read(name);
            using var s = start.Read(name);
            Assert.Equal(ScalarType.Float32, b.dtype);
            diff += (b.to(ScalarType.Float64) - a.to(ScalarType.Float64)).square().sum().item<double>();
            moved += (a.to(ScalarType.Float64) - s.to(ScalarType.Float64)).square().sum().item<double>();
        }
        // the two runs' weights differ by a small part of how far training moved them
        Assert.True(moved > 0);
        Assert.True(Math.Sqrt(diff / moved) < 0.25, $"‖bf16 − float32‖ / ‖float32 − initial‖ = {Math.Sqrt(diff / moved):G3}");
    }

    [Fact]
    public void What_a_stage_does_not_train_comes_back_bit_for_bit()
    {
        // alignment trains the attention side; the MLPs, norms and embeddings pass through bf16 working copies and must
        // come out of the stage exactly as they went in
        using var before = Checkpoint.Open(Path.Combine(runs.Bf16Run, "student-init"));
        using var after = Checkpoint.Open(Path.Combine(runs.Bf16Run, "01-align", "student"));
        var untouched = before.Names.Where(n => !n.Contains(".self_attn.")).ToArray();
        Assert.NotEmpty(untouched);
        foreach (var name in untouched)
        {
            using var a = before.Read(name);
            using var b = after.Read(name);
            Assert.True(a.equal(b).all().item<bool>(), $"{name} changed in a stage that does not train it");
        }
        var trained = before.Names.Where(n => n.Contains(".self_attn.q_proj.weight")).ToArray();
        Assert.Contains(trained, name =>
        {
            using var a = before.Read(name);
            using var b = after.Read(name);
            return !a.equal(b).all().item<bool>();
        });
    }

    [Fact]
    public void A_bf16_run_killed_mid_stage_and_resumed_follows_the_same_trajectory()
    {
        var recipe = RecipeLoader.Load(runs.Bf16Recipe);
        var run = dir["run"];
        var ct = TestContext.Current.CancellationToken;
        Assert.ThrowsAny<Exception>(() => DistillationRun.Run(recipe, run, new DistillOptions { TensorBoard = false }, new StopAt("kd", 5), ct));
        DistillationRun.Run(recipe, run, new DistillOptions { TensorBoard = false, Resume = true }, cancellationToken: ct);
        foreach (var stage in new[] { "01-align", "02-kd", "03-lora" })
            foreach (var (e, a) in Trajectory(runs.Bf16Run, stage).Zip(Trajectory(run, stage)))
                Assert.True(Math.Abs(e.Loss - a.Loss) <= 1e-6, $"{stage} step {e.Step}: loss {a.Loss} after resuming, {e.Loss} uninterrupted");
        using var expected = Checkpoint.Open(Path.Combine(runs.Bf16Run, "student"));
        using var actual = Checkpoint.Open(Path.Combine(run, "student"));
        foreach (var name in expected.Names)
        {
            using var e = expected.Read(name);
            using var a = actual.Read(name);
            Assert.True(e.equal(a).all().item<bool>(), $"final {name} differs after resuming");
        }
    }

    /// <summary>Throws, as a kill stops the process, once a stage reaches a step.</summary>
    sealed class StopAt(string stage, long step) : IProgress<DistillationProgress>
    {
        public void Report(DistillationProgress p)
        {
            if (p.Note is null && p.Stage == stage && p.Step == step) throw new InvalidOperationException("killed");
        }
    }
}
