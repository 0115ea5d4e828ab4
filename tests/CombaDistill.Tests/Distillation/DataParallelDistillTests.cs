using System.Diagnostics;
using System.Runtime.InteropServices;
using CombaDistill.Distillation;
using CombaDistill.IO;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests.Distillation;

/// <summary>
/// <c>distill --workers 2</c> as users run it (a launcher and two CPU worker processes reducing over loopback TCP)
/// against one process with the same global batch, on a tiny stage-2 (KL) run on stories260K: the same losses and
/// weights up to the order of floating-point sums; a stop signal and a resume; a worker that dies.
/// </summary>
public sealed class DataParallelDistillTests(DataParallelDistillTests.Reference reference) : IClassFixture<DataParallelDistillTests.Reference>, IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    /// <summary>One KL stage: per step 2 micro-batches of 2 sequences for one process, one micro-batch each for two workers.</summary>
    public static string RecipeText(int steps = 16) => $"""
        seed: 11
        teacher:
          llama2c: {Shared.Stories260KBin}
          tokenizer: {Shared.Tok512Bin}
        student:
          convert: {"{"} chunk_size: 16 {"}"}
        data:
          train: {"{"} path: {Shared.TinyStoriesTrain}, max_tokens: 4000 {"}"}
          validation: {"{"} path: {Shared.TinyStoriesValid}, max_tokens: 400 {"}"}
          add_eos: false
          eval_tokens: 160
        stages:
          - name: kd
            objective: distillation
            trainable: all
            optimizer: {"{"} lr: 2e-3, weight_decay: 0.01 {"}"}
            schedule: {"{"} warmup_steps: 3 {"}"}
            steps: {steps}
            sequence_length: 32
            micro_batch: 2
            accumulation: 2
            temperature: 2
            kl_weight: 1.0
            ce_weight: 0.3
            log_every: 1
            eval_every: 8
            checkpoint_every: 100
        """;

    /// <summary>The one-process run every test compares with.</summary>
    public sealed class Reference : IDisposable
    {
        readonly TempDir dir = new();
        public string RecipePath { get; }
        public string RunFolder { get; }

        public Reference()
        {
            TorchSharp.torch.set_num_threads(1);
            RecipePath = dir["recipe.yaml"];
            File.WriteAllText(RecipePath, RecipeText());
            RunFolder = dir["run"];
            DistillationRun.Run(RecipeLoader.Load(RecipePath), RunFolder, new DistillOptions { TensorBoard = false });
        }

        public void Dispose() => dir.Dispose();
    }

    static string[] Distill(string recipe, string run, params string[] extra) =>
        ["distill", "--recipe", recipe, "--run-dir", run, "--workers", "2", "--threads", "1", "--no-tensorboard", .. extra];

    static void AssertSameRun(string expectedRun, string actualRun)
    {
        var metrics = Path.Combine("01-kd", StageMetrics.FileName);
        var (expected, expectedEvals) = StageMetrics.Read(Path.Combine(expectedRun, metrics));
        var (actual, actualEvals) = StageMetrics.Read(Path.Combine(actualRun, metrics));
        Assert.Equal(expected.Select(m => m.Step), actual.Select(m => m.Step));      // rank 0 alone logged: one line per step
        foreach (var (e, a) in expected.Zip(actual))
        {
            Assert.True(Math.Abs(e.Loss - a.Loss) <= 1e-5 * Math.Abs(e.Loss), $"step {e.Step}: loss {a.Loss} with two workers, {e.Loss} with one");
            Assert.True(Math.Abs(e.GradNorm - a.GradNorm) <= 1e-4 * e.GradNorm, $"step {e.Step}: gradient norm {a.GradNorm} with two workers, {e.GradNorm} with one");
            Assert.Equal(e.Tokens, a.Tokens);
        }
        Assert.Equal(expectedEvals.Select(m => m.Step), actualEvals.Select(m => m.Step));
        foreach (var (e, a) in expectedEvals.Zip(actualEvals))
        {
            Assert.Equal(e.StudentCrossEntropy, a.StudentCrossEntropy, 1e-5 * e.StudentCrossEntropy);
            Assert.Equal(e.Kl!.Value, a.Kl!.Value, 1e-5 * e.Kl.Value);
        }
        using var expectedWeights = Checkpoint.Open(Path.Combine(expectedRun, "student"));
        using var actualWeights = Checkpoint.Open(Path.Combine(actualRun, "student"));
        Assert.Equal(expectedWeights.Names.Order(), actualWeights.Names.Order());
        foreach (var name in expectedWeights.Names)
        {
            using var e = expectedWeights.Read(name);
            using var a = actualWeights.Read(name);
            Assert.True(e.allclose(a, rtol: 1e-4, atol: 2e-5), $"final {name} differs by up to {(e - a).abs().max().item<float>()}");
        }
    }

    [Fact]
    public void Two_workers_follow_the_one_process_trajectory()
    {
        var run = dir["run"];
        var (code, stdout, stderr) = CliProcess.Run(Distill(reference.RecipePath, run));
        Assert.True(code == 0, stderr);
        Assert.Contains("starting 2 workers on the CPU", stderr);
        Assert.Contains("held-out perplexity", stdout);
        Assert.Single(stdout.Split('\n'), l => l.Contains("held-out perplexity"));    // rank 0 alone reports
        Assert.True(File.Exists(Path.Combine(run, DistillationRun.SummaryFile)));
        AssertSameRun(reference.RunFolder, run);
    }

    [Fact]
    public async Task A_stop_signal_stops_every_worker_after_the_same_step_and_the_run_resumes()
    {
        var run = dir["run"];
        var metrics = Path.Combine(run, "01-kd", StageMetrics.FileName);
        using (var launcher = Process.Start(CliProcess.StartInfo(Distill(reference.RecipePath, run)))!)
        {
            var stderr = launcher.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
            _ = launcher.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
            WaitForStep(launcher, metrics, 4);
            // SIGTERM, as `kill` or `docker stop` sends it (a terminal's Ctrl-C is SIGINT, handled alike; a test run
            // from a background job may have SIGINT ignored)
            Assert.Equal(0, kill(launcher.Id, SigTerm));
            Assert.True(launcher.WaitForExit(TimeSpan.FromMinutes(2)), "the workers did not stop after the signal");
            var messages = await stderr;
            Assert.True(launcher.ExitCode is 130 or 143, messages);
            Assert.Contains("stopped at step", messages);
        }
        // checkpoint_every is 100: the only checkpoint is the one the stop saved, at the step all workers agreed on
        var saved = Assert.Single(StageCheckpoints.List(Path.Combine(run, "01-kd", "checkpoints")));
        Assert.InRange(saved.Step, 4, 15);
        Assert.Equal(saved.Step, StageMetrics.Read(metrics).Train.Max(m => m.Step));

        var (code, stdout, resumed) = CliProcess.Run(Distill(reference.RecipePath, run, "--resume"));
        Assert.True(code == 0, resumed);
        Assert.Contains($"resuming from step-{saved.Step:D8}", resumed);
        Assert.Contains("held-out perplexity", stdout);
        AssertSameRun(reference.RunFolder, run);
    }

    [Fact]
    public async Task A_worker_that_dies_stops_the_others_with_a_clear_error()
    {
        var recipe = dir["long.yaml"];
        File.WriteAllText(recipe, RecipeText(steps: 5000));
        var run = dir["run"];
        var metrics = Path.Combine(run, "01-kd", StageMetrics.FileName);
        using var launcher = Process.Start(CliProcess.StartInfo(Distill(recipe, run)))!;
        var stderr = launcher.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        _ = launcher.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        WaitForStep(launcher, metrics, 2);
        var workers = Children(launcher.Id);
        var rankOne = Assert.Single(workers, pid => Environ(pid).Contains("COMBADISTILL_RANK=1"));
        Process.GetProcessById(rankOne).Kill();                    // SIGKILL, as the OOM killer would
        Assert.True(launcher.WaitForExit(TimeSpan.FromMinutes(2)), "the job hung after a worker died");
        Assert.Equal(137, launcher.ExitCode);
        Assert.Contains("worker 1 exited with code 137; the other workers were stopped", await stderr);
        Assert.All(workers, pid => Assert.False(Directory.Exists($"/proc/{pid}"), $"worker {pid} outlived the job"));
        Assert.False(Directory.Exists(Path.Combine(run, "student")));
    }

    static void WaitForStep(Process launcher, string metrics, int step)
    {
        var clock = Stopwatch.StartNew();
        while (!(File.Exists(metrics) && File.ReadAllText(metrics).Contains($"\"step\":{step},")))
        {
            Assert.False(launcher.HasExited, "the run ended before the test could interrupt it");
            Assert.True(clock.Elapsed < TimeSpan.FromMinutes(3), $"the run did not reach step {step}");
            Thread.Sleep(10);
        }
    }

    static int[] Children(int pid) => Directory.GetDirectories($"/proc/{pid}/task")
        .SelectMany(task => File.ReadAllText(Path.Combine(task, "children")).Split(' ', StringSplitOptions.RemoveEmptyEntries))
        .Select(int.Parse).Distinct().ToArray();

    static string Environ(int pid) => File.ReadAllText($"/proc/{pid}/environ").Replace('\0', '\n');

    const int SigTerm = 15;

    [DllImport("libc.so.6")]
    static extern int kill(int pid, int signal);
}
