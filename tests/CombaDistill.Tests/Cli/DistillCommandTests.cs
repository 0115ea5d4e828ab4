using System.Diagnostics;
using System.Text;
using CombaDistill.Distillation;
using CombaDistill.IO;
using CombaDistill.Tests.Distillation;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests.Cli;

/// <summary>The distill command as users run it: the built CLI in its own process, killed with SIGKILL and resumed.</summary>
public sealed class DistillCommandTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    [Fact]
    public void A_run_killed_with_SIGKILL_and_resumed_follows_the_uninterrupted_trajectory()
    {
        // the shared toy recipe with a longer second stage, so the kill lands mid-stage
        var recipePath = dir["recipe.yaml"];
        File.WriteAllText(recipePath, DistillationRunTests.RecipeText().Replace("    steps: 7\n", "    steps: 60\n"));
        TorchSharp.torch.set_num_threads(1);
        var reference = dir["reference"];
        DistillationRun.Run(RecipeLoader.Load(recipePath), reference, new DistillOptions { TensorBoard = false }, cancellationToken: TestContext.Current.CancellationToken);

        var run = dir["run"];
        var metrics = Path.Combine(run, "02-kd", StageMetrics.FileName);
        using (var process = Process.Start(CliProcess.StartInfo("distill", "--recipe", recipePath, "--run-dir", run, "--device", "cpu", "--threads", "1", "--no-tensorboard"))!)
        {
            _ = process.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
            _ = process.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
            var clock = Stopwatch.StartNew();
            while (!process.HasExited && !(File.Exists(metrics) && File.ReadAllText(metrics).Contains("\"step\":7,")))
            {
                Assert.True(clock.Elapsed < TimeSpan.FromMinutes(5), "the run did not reach stage 2, step 7");
                Thread.Sleep(10);
            }
            Assert.False(process.HasExited, "the run ended before it could be killed");
            process.Kill();                                   // SIGKILL: no handler runs, nothing is saved
            process.WaitForExit();
        }
        Assert.False(Directory.Exists(Path.Combine(run, "student")));
        Assert.NotEmpty(StageCheckpoints.List(Path.Combine(run, "02-kd", "checkpoints")));

        var (code, stdout, stderr) = CliProcess.Run("distill", "--recipe", recipePath, "--run-dir", run, "--device", "cpu", "--threads", "1", "--no-tensorboard", "--resume");
        Assert.True(code == 0, stderr);
        Assert.Contains("resuming from step-", stderr);
        Assert.Contains("held-out perplexity", stdout);
        // piped into a log, the summary keeps whole names (Spectre would squeeze it into 80 columns)
        Assert.Contains("attention_alignment", stdout);

        foreach (var stage in new[] { "01-align", "02-kd" })
        {
            var expected = StageMetrics.Read(Path.Combine(reference, stage, StageMetrics.FileName)).Train;
            var actual = StageMetrics.Read(Path.Combine(run, stage, StageMetrics.FileName)).Train;
            Assert.Equal(expected.Select(m => m.Step), actual.Select(m => m.Step));
            foreach (var (e, a) in expected.Zip(actual))
                Assert.True(Math.Abs(e.Loss - a.Loss) <= 1e-6, $"{stage} step {e.Step}: {a.Loss} after the kill, {e.Loss} uninterrupted");
        }
        using var expectedWeights = Checkpoint.Open(Path.Combine(reference, "student"));
        using var actualWeights = Checkpoint.Open(Path.Combine(run, "student"));
        foreach (var name in expectedWeights.Names)
        {
            using var e = expectedWeights.Read(name);
            using var a = actualWeights.Read(name);
            Assert.True(e.allclose(a, rtol: 0, atol: 1e-6), $"final {name} differs");
        }
    }

    [Fact]
    public void A_bad_recipe_fails_before_any_work_with_one_line()
    {
        var recipePath = dir["bad.yaml"];
        File.WriteAllText(recipePath, DistillationRunTests.RecipeText().Replace("lr: 3e-3", "lr: -3e-3"));
        var run = dir["run"];
        var (code, stdout, stderr) = CliProcess.Run("distill", "--recipe", recipePath, "--run-dir", run);
        Assert.Equal(2, code);
        Assert.Equal("", stdout);
        Assert.Contains("field 'stages[0].optimizer.lr' is -0.003", stderr);
        Assert.Single(stderr.Trim().Split('\n'));
        Assert.False(Directory.Exists(run));

        File.WriteAllText(recipePath, DistillationRunTests.RecipeText());
        var ok = CliProcess.Run("distill", "--recipe", recipePath, "--run-dir", run, "--validate");
        Assert.True(ok.Code == 0, ok.Stderr);
        Assert.Contains("2 stage(s)", ok.Stderr);
        Assert.False(Directory.Exists(run));
    }

    [Fact]
    public void A_run_dir_that_is_a_file_is_refused_by_validate_and_by_the_run_and_left_alone()
    {
        var recipePath = dir["recipe.yaml"];
        File.WriteAllText(recipePath, DistillationRunTests.RecipeText());
        var notes = dir["notes.md"];
        File.WriteAllText(notes, "# my notes");
        foreach (var extra in new[] { "--validate", "--no-tensorboard" })
        {
            var (code, stdout, stderr) = CliProcess.Run("distill", "--recipe", recipePath, "--run-dir", notes, "--device", "cpu", extra);
            Assert.Equal(2, code);
            Assert.Equal("", stdout);
            Assert.Equal($"error: {notes}: is a file; --run-dir must be a folder\n", stderr.Replace("\r\n", "\n"));
        }
        // the library call refuses it as well, before it tokenizes or imports anything
        var e = Assert.Throws<InvalidInputException>(() => DistillationRun.Run(RecipeLoader.Load(recipePath), notes, new DistillOptions { TensorBoard = false }, cancellationToken: TestContext.Current.CancellationToken));
        Assert.Equal($"{notes}: is a file; --run-dir must be a folder", e.Message);
        Assert.Equal("# my notes", File.ReadAllText(notes));
        Assert.Equal(new[] { notes, recipePath }.Order(StringComparer.Ordinal), Directory.GetFileSystemEntries(dir.Path).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void A_misspelt_recipe_field_prints_the_suggestion_and_the_whole_list_of_fields()
    {
        var recipePath = dir["typo.yaml"];
        File.WriteAllText(recipePath, DistillationRunTests.RecipeText().Replace("micro_batch: 2", "micro_bach: 2"));
        var expected = Assert.Throws<InvalidInputException>(() => RecipeLoader.Load(recipePath));
        var (code, stdout, stderr) = CliProcess.Run("distill", "--recipe", recipePath, "--run-dir", dir["run"]);
        Assert.Equal(2, code);
        Assert.Equal("", stdout);
        var line = Assert.Single(stderr.Trim().Split('\n'));
        Assert.Contains("is not a known field; did you mean 'micro_batch'? Expected one of: ", line);
        // the list is longer than the 300-character bound on the rest of the line, and none of it is elided
        Assert.True(line.Length > "error: ".Length + 300, $"{line.Length} characters");
        Assert.EndsWith(expected.Guidance, line);
        Assert.DoesNotContain("characters) …", line);
    }
}
