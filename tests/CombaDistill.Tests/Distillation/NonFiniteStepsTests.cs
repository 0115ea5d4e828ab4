using CombaDistill.Distillation;
using CombaDistill.IO;
using CombaDistill.Modeling.Comba;
using CombaDistill.Runtime.Cuda;
using CombaDistill.Tests.Support;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Distillation;

/// <summary>A diverging stage skips its non-finite updates, then stops instead of training on.</summary>
public sealed class NonFiniteStepsTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    [Fact]
    public void Non_finite_steps_are_skipped_until_more_than_the_tolerated_number_come_in_a_row()
    {
        var steps = new NonFiniteSteps("kd", tolerated: 2);
        Assert.True(steps.Observe(1, 0.5, 1.0));
        Assert.False(steps.Observe(2, double.NaN, 1.0));
        Assert.False(steps.Observe(3, 0.5, double.PositiveInfinity));
        Assert.Equal(2, steps.InARow);
        Assert.True(steps.Observe(4, 0.4, 0.9));            // a finite step ends the run of them
        Assert.Equal(0, steps.InARow);
        Assert.False(steps.Observe(5, double.NaN, double.NaN));
        Assert.False(steps.Observe(6, double.NaN, double.NaN));
        var e = Assert.Throws<TrainingDivergedException>(() => steps.Observe(7, double.NaN, double.NaN));
        Assert.Equal(("kd", 7L), (e.Stage, e.Step));
        Assert.Contains("stage 'kd' stopped at step 7", e.Message);
        Assert.Contains("3 step(s) in a row", e.Message);
        Assert.Equal(5, steps.Total);

        Assert.Throws<TrainingDivergedException>(() => new NonFiniteSteps("align", 0).Observe(1, double.NegativeInfinity, 0));
    }

    [Fact]
    public void A_student_that_gives_NaN_stops_its_stage_without_an_update_and_its_metrics_stay_readable()
    {
        TorchSharp.torch.set_num_threads(1);
        var path = dir["recipe.yaml"];
        File.WriteAllText(path, DistillationRunTests.RecipeText().Replace("    steps: 6\n", "    steps: 6\n    max_nonfinite_steps: 2\n"));
        var recipe = RecipeLoader.Load(path);
        Assert.Equal(2, recipe.Stages[0].MaxNonFiniteSteps);
        var run = dir["run"];
        DistillationRun.Prepare(recipe, run, cancellationToken: TestContext.Current.CancellationToken);

        // one NaN in layer 0's output projection: every step's alignment loss is NaN from the start
        var init = Path.Combine(run, "student-init");
        Tensor before;
        using (var student = CombaForCausalLM.FromPretrained(init))
        {
            using (no_grad()) student.model.layers[0].self_attn.get_parameter("o_proj.weight")![0, 0].fill_(float.NaN);
            before = student.model.layers[1].self_attn.get_parameter("q_proj.weight")!.detach().clone();
            StudentFolder.Save(student, init, init, force: true);
        }

        var notes = new List<string>();
        var e = Assert.Throws<TrainingDivergedException>(() => DistillationRun.Run(recipe, run, new DistillOptions { TensorBoard = false, Resume = true },
            new ImmediateProgress<DistillationProgress>(p => { if (p.IsWarning) notes.Add(p.Note!); }), TestContext.Current.CancellationToken));
        Assert.Equal(("align", 3L), (e.Stage, e.Step));
        Assert.Equal(2, notes.Count(n => n.Contains("update was skipped")));

        var train = StageMetrics.Read(Path.Combine(run, "01-align", StageMetrics.FileName)).Train;
        Assert.Equal([1L, 2L], train.Select(m => m.Step));
        Assert.All(train, m => Assert.True(double.IsNaN(m.Loss)));
        // the checkpoint at step 2 holds the weights as they were: no update reached them
        var checkpoint = StageCheckpoints.List(Path.Combine(run, "01-align", "checkpoints"))[^1].Path;
        Assert.Equal(2, StageCheckpoints.ReadState(checkpoint).Step);
        using var reloaded = Checkpoint.Open(Path.Combine(checkpoint, StageCheckpoints.WeightsFile));
        Assert.Contains(reloaded.Names, n => n.Contains("layers.1.self_attn.q_proj.weight"));
        using var saved = reloaded.Read(reloaded.Names.First(n => n.Contains("layers.1.self_attn.q_proj.weight")));
        Assert.True(saved.equal(before).all().item<bool>(), "a skipped step changed a weight");
    }
}
