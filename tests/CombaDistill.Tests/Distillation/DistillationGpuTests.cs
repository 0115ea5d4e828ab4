using CombaDistill.Distillation;
using CombaDistill.Tests.Support;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Distillation;

/// <summary>The GPU lane: the toy run on CUDA (teacher in bf16, student and optimizer in fp32) trains as it does on the CPU.</summary>
public sealed class DistillationGpuTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    [Fact]
    public void TheToyRecipeRunsOnCudaLikeOnTheCpu()
    {
        Gpu.Require();
        var path = dir["recipe.yaml"];
        File.WriteAllText(path, DistillationRunTests.RecipeText());
        var recipe = RecipeLoader.Load(path);
        var ct = TestContext.Current.CancellationToken;
        var onCpu = DistillationRun.Run(recipe, dir["cpu"], new DistillOptions { TensorBoard = false }, cancellationToken: ct);
        var onCuda = DistillationRun.Run(recipe, dir["cuda"], new DistillOptions { TensorBoard = false, Device = CUDA }, cancellationToken: ct);

        // bf16 teacher against the fp32 one: the same model within bf16's precision
        Assert.Equal(onCpu.TeacherPerplexity, onCuda.TeacherPerplexity, onCpu.TeacherPerplexity * 0.02);
        Assert.Equal(onCpu.ValidationTokens, onCuda.ValidationTokens);
        for (var s = 0; s < 2; s++)
        {
            var (cpu, cuda) = (onCpu.Stages[s], onCuda.Stages[s]);
            Assert.Equal(cpu.Steps, cuda.Steps);
            var (first, last) = s == 0 ? (cuda.First!.Alignment!.Value, cuda.Last!.Alignment!.Value) : (cuda.First!.Kl!.Value, cuda.Last!.Kl!.Value);
            Assert.True(double.IsFinite(first) && last < first, $"stage {cpu.Name} on CUDA: {first} → {last}");
            var cpuFirst = s == 0 ? cpu.First!.Alignment!.Value : cpu.First!.Kl!.Value;
            Assert.Equal(cpuFirst, first, cpuFirst * 0.05);
        }
        Assert.Equal(onCpu.StudentPerplexity, onCuda.StudentPerplexity, onCpu.StudentPerplexity * 0.05);
    }
}
