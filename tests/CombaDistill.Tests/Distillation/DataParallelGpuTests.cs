using CombaDistill.Distillation;
using CombaDistill.IO;
using CombaDistill.Tests.Support;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Distillation;

/// <summary>
/// The GPU lane for data parallelism: <c>distill --gpus 2</c> (two processes reducing through NCCL) against
/// <c>--gpus 1</c> on the tiny stage-2 recipe, and a teacher split over two GPUs against the whole teacher on one.
/// </summary>
public sealed class DataParallelGpuTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    static void RequireTwoGpus()
    {
        Gpu.Require();
        Assert.SkipWhen(cuda.device_count() < 2, $"needs 2 CUDA devices; this machine has {cuda.device_count()}");
    }

    static IReadOnlyList<TrainMetrics> Train(string run) => StageMetrics.Read(Path.Combine(run, "01-kd", StageMetrics.FileName)).Train;

    static void AssertClose(string expectedRun, string actualRun, double lossTolerance, string what)
    {
        var (expected, actual) = (Train(expectedRun), Train(actualRun));
        Assert.Equal(expected.Select(m => m.Step), actual.Select(m => m.Step));
        foreach (var (e, a) in expected.Zip(actual))
            Assert.True(Math.Abs(e.Loss - a.Loss) <= lossTolerance * Math.Abs(e.Loss), $"step {e.Step}: loss {a.Loss} {what}, {e.Loss} on one GPU");
        using var expectedWeights = Checkpoint.Open(Path.Combine(expectedRun, "student"));
        using var actualWeights = Checkpoint.Open(Path.Combine(actualRun, "student"));
        foreach (var name in expectedWeights.Names)
        {
            using var e = expectedWeights.Read(name);
            using var a = actualWeights.Read(name);
            Assert.True(e.allclose(a, rtol: 1e-3, atol: 1e-4), $"final {name} {what} differs by up to {(e - a).abs().max().item<float>()}");
        }
    }

    string[] Distill(string run, params string[] extra)
    {
        var recipe = dir["recipe.yaml"];
        if (!File.Exists(recipe)) File.WriteAllText(recipe, DataParallelDistillTests.RecipeText());
        return ["distill", "--recipe", recipe, "--run-dir", run, "--no-tensorboard", .. extra];
    }

    [Fact]
    public void Two_GPUs_follow_the_one_GPU_trajectory()
    {
        RequireTwoGpus();
        var (one, two) = (dir["one"], dir["two"]);
        var single = CliProcess.Run(Distill(one, "--gpus", "1"));
        Assert.True(single.Code == 0, single.Stderr);
        var pair = CliProcess.Run(Distill(two, "--gpus", "2"));
        Assert.True(pair.Code == 0, pair.Stderr);
        Assert.Contains("starting 2 workers on cuda:0 … cuda:1", pair.Stderr);
        // the teacher runs in bf16 on a GPU; the sums of the two ranks' gradients come in another order
        AssertClose(one, two, 1e-4, "on two GPUs");
    }

    [Fact]
    public void A_teacher_split_over_two_GPUs_distills_like_one_on_one_GPU()
    {
        RequireTwoGpus();
        var (whole, split) = (dir["whole"], dir["split"]);
        var single = CliProcess.Run(Distill(whole, "--device", "cuda:0"));
        Assert.True(single.Code == 0, single.Stderr);
        var spread = CliProcess.Run(Distill(split, "--device", "cuda:0", "--teacher-gpus", "2"));
        Assert.True(spread.Code == 0, spread.Stderr);
        Assert.Contains("teacher split by layer: layers 0–1 on cuda:0, 2–4 on cuda:1; embeddings and head on cuda:0", spread.Stderr);
        AssertClose(whole, split, 1e-4, "with the teacher split");
    }
}
