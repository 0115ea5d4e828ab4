using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using CombaDistill.Distillation;
using CombaDistill.IO;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests.Distillation;

/// <summary>
/// The distill command killed with SIGKILL at random points of each of its three stages and during the final copy of
/// the student, resumed each time: the student it ends with must have the uninterrupted run's weights bit for bit, and
/// nothing a kill left behind may remain. Also: a second SIGTERM while the first is being handled.
/// </summary>
public sealed class KillAndResumeTests : IDisposable
{
    readonly TempDir dir = new();
    public void Dispose() => dir.Dispose();

    static string ThreeStageRecipe() => DistillationRunTests.RecipeText("""
          - name: ft
            objective: fine_tuning
            optimizer: { lr: 1e-3 }
            steps: 6
            sequence_length: 32
            micro_batch: 2
            log_every: 1
            eval_every: 100
            checkpoint_every: 2
        """);

    /// <summary>SHA-256 over every tensor's name, dtype, shape and bytes, in name order.</summary>
    static string WeightsHash(string folder)
    {
        using var checkpoint = Checkpoint.Open(folder);
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var name in checkpoint.Names.Order(StringComparer.Ordinal))
        {
            var info = checkpoint.Info(name);
            sha.AppendData(System.Text.Encoding.UTF8.GetBytes($"{name}|{info.DType}|{info.ShapeText}|"));
            using var file = File.OpenRead(checkpoint.FileOf(name));
            var bytes = new byte[info.ByteSize];
            file.Position = info.Begin;
            file.ReadExactly(bytes);
            sha.AppendData(bytes);
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    static string[] Distill(string recipe, string run, bool resume) =>
        ["distill", "--recipe", recipe, "--run-dir", run, "--device", "cpu", "--threads", "1", "--no-tensorboard", .. resume ? new[] { "--resume" } : []];

    /// <summary>Starts the command and kills it (SIGKILL) once <paramref name="metrics"/> logs <paramref name="step"/>.</summary>
    static void KillAtStep(string[] args, string metrics, long step)
    {
        using var process = Process.Start(CliProcess.StartInfo(args))!;
        var stderr = process.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        _ = process.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        var clock = Stopwatch.StartNew();
        while (!process.HasExited && !(File.Exists(metrics) && ReadShared(metrics).Contains($"\"step\":{step},")))
        {
            Assert.True(clock.Elapsed < TimeSpan.FromMinutes(5), $"{metrics} never reached step {step}");
            Thread.Sleep(5);
        }
        if (process.HasExited) Assert.Fail($"the run ended before step {step} of {metrics}: {stderr.Result}");
        process.Kill();
        process.WaitForExit();
    }

    static string ReadShared(string path)
    {
        try
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            return new StreamReader(stream).ReadToEnd();
        }
        catch (IOException) { return ""; }
    }

    static IEnumerable<string> Leftovers(string run) =>
        Directory.EnumerateFileSystemEntries(run, "*", SearchOption.AllDirectories)
            .Where(p => Path.GetFileName(p) is var n && n.StartsWith('.') && (n.Contains(".tmp-") || n.Contains(".old-")));

    [Fact]
    public void Killed_at_random_points_of_all_three_stages_and_of_the_final_copy_the_run_ends_with_the_uninterrupted_weights()
    {
        var recipePath = dir["recipe.yaml"];
        File.WriteAllText(recipePath, ThreeStageRecipe());
        TorchSharp.torch.set_num_threads(1);
        var reference = dir["reference"];
        DistillationRun.Run(RecipeLoader.Load(recipePath), reference, new DistillOptions { TensorBoard = false }, cancellationToken: TestContext.Current.CancellationToken);
        var expected = WeightsHash(Path.Combine(reference, "student"));

        var seed = Environment.TickCount;
        var random = new Random(seed);
        var run = dir["run"];
        var stages = new[] { ("01-align", 6), ("02-kd", 7), ("03-ft", 6) };
        foreach (var (i, (stage, steps)) in stages.Index())
        {
            var step = random.Next(1, steps);   // a step strictly inside the stage
            KillAtStep(Distill(recipePath, run, resume: i > 0), Path.Combine(run, stage, StageMetrics.FileName), step);
            Assert.False(Directory.Exists(Path.Combine(run, "student")), $"seed {seed}: killed in {stage} at step {step}, yet a final student exists: {string.Join(", ", Directory.GetFileSystemEntries(run).Select(Path.GetFileName))}; {File.ReadAllText(Path.Combine(run, stage, StageMetrics.FileName))}");
        }

        // killed after the last stage, while the student is copied into place
        var start = CliProcess.StartInfo(Distill(recipePath, run, resume: true));
        start.Environment["COMBADISTILL_KILL_AT_COMMIT"] = "student";
        using (var process = Process.Start(start)!)
        {
            _ = process.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
            var stderr = process.StandardError.ReadToEnd();
            process.WaitForExit();
            Assert.True(process.ExitCode == 137, $"seed {seed}: exit {process.ExitCode}, expected the SIGKILL at the copy: {stderr}");
        }
        Assert.False(Directory.Exists(Path.Combine(run, "student")));
        Assert.NotEmpty(Leftovers(run));   // the half-done copy, as a kill leaves it

        var (code, stdout, stderrFinal) = CliProcess.Run(Distill(recipePath, run, resume: true));
        Assert.True(code == 0, $"seed {seed}: {stderrFinal}");
        Assert.Contains("held-out perplexity", stdout);
        Assert.True(expected == WeightsHash(Path.Combine(run, "student")), $"seed {seed}: the resumed student's weights differ from the uninterrupted run's");
        Assert.Empty(Leftovers(run));
    }

    [DllImport("libc", SetLastError = true)]
    static extern int kill(int pid, int signal);

    [Fact]
    public async Task A_second_SIGTERM_while_the_first_is_handled_ends_the_run_cleanly_with_a_checkpoint()
    {
        var recipePath = dir["recipe.yaml"];
        File.WriteAllText(recipePath, DistillationRunTests.RecipeText().Replace("    steps: 7\n", "    steps: 400\n"));
        var run = dir["run"];
        var metrics = Path.Combine(run, "02-kd", StageMetrics.FileName);
        using var process = Process.Start(CliProcess.StartInfo(Distill(recipePath, run, resume: false)))!;
        var stderr = process.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        _ = process.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        var clock = Stopwatch.StartNew();
        while (!process.HasExited && !(File.Exists(metrics) && ReadShared(metrics).Contains("\"step\":3,")))
        {
            Assert.True(clock.Elapsed < TimeSpan.FromMinutes(5), "the run did not reach stage 2, step 3");
            Thread.Sleep(5);
        }
        Assert.False(process.HasExited);
        Assert.Equal(0, kill(process.Id, 15));
        Thread.Sleep(20);
        Assert.Equal(0, kill(process.Id, 15));   // as GNU timeout or an impatient user sends it
        Assert.True(process.WaitForExit(TimeSpan.FromMinutes(2)), "the run did not stop");
        var text = await stderr;
        Assert.True(process.ExitCode == 130, $"exit {process.ExitCode}: {text}");
        Assert.DoesNotContain("Unhandled", text);
        Assert.DoesNotContain("   at ", text);
        Assert.Contains("already stopping", text);
        Assert.NotEmpty(StageCheckpoints.List(Path.Combine(run, "02-kd", "checkpoints")));
        Assert.Empty(Leftovers(run));
    }
}
