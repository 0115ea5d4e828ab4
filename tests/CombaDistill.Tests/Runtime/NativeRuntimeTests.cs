using CombaDistill.Runtime;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Runtime;

public class NativeRuntimeTests
{
    static string OutputCopy => Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libLibTorchSharp.so");

    static string NuGetCacheCopy
    {
        get
        {
            var root = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } p ? p
                : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
            return Path.Combine(root, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        }
    }

    static bool SystemLibStdCxxHas(string version) =>
        new[] { "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6" }
            .Where(File.Exists).Take(1)
            .Any(f => File.ReadAllBytes(f).AsSpan().IndexOf(System.Text.Encoding.ASCII.GetBytes(version + "\0")) >= 0);

    [Fact]
    public void Output_copy_marks_GLIBCXX_3_4_32_weak_and_the_NuGet_cache_is_untouched()
    {
        Assert.SkipWhen(SystemLibStdCxxHas("GLIBCXX_3.4.32"), "system libstdc++ has GLIBCXX_3.4.32; the build does not patch");
        Assert.SkipUnless(File.Exists(OutputCopy), "no bundled CPU libtorch in this build (GPU host package)");
        var patched = ElfVersionNeeds.Read(OutputCopy).Single(n => n.Version == "GLIBCXX_3.4.32");
        Assert.True(patched.Weak);
        // every other requirement stays strong: the patch touches exactly one entry
        Assert.All(ElfVersionNeeds.Read(OutputCopy).Where(n => n.Version != "GLIBCXX_3.4.32"), n => Assert.False(n.Weak));
        if (File.Exists(NuGetCacheCopy))
            Assert.False(ElfVersionNeeds.Read(NuGetCacheCopy).Single(n => n.Version == "GLIBCXX_3.4.32").Weak);
        Assert.False(Directory.Exists(Path.Combine(AppContext.BaseDirectory, "cpu")), "TorchSharp's consolidation fallback ran");
    }

    [Fact]
    public void Torch_runs_autograd_and_sdpa()
    {
        using var scope = NewDisposeScope();
        var x = randn(2, 4, 8, 16, requires_grad: true);
        var y = nn.functional.scaled_dot_product_attention(x, x, x, is_casual: true);
        y.sum().backward();
        Assert.Equal(new long[] { 2, 4, 8, 16 }, y.shape);
        Assert.True(x.grad is not null && x.grad.abs().sum().item<float>() > 0);
    }

    [Theory]
    [InlineData("cpu")]
    [InlineData("auto")]
    public void Device_spec_resolves(string spec) => Assert.NotNull(DeviceSpec.Resolve(spec));

    [Theory]
    [InlineData("gpu")]
    [InlineData("cuda:x")]
    public void Bad_device_spec_is_a_clear_error(string spec)
    {
        var e = Assert.Throws<ArgumentException>(() => DeviceSpec.Resolve(spec));
        Assert.Contains("--device", e.Message);
    }
}
