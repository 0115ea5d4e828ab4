using CombaDistill.IO;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests.IO;

public class IoRetryTests
{
    static readonly Polly.ResiliencePipeline Fast = IoRetry.Create(maxRetries: 3, baseDelay: TimeSpan.Zero);

    [Fact]
    public void A_transient_failure_is_retried_until_it_passes()
    {
        var calls = 0;
        var result = IoRetry.Execute(() => ++calls < 3 ? throw new IOException("resource temporarily unavailable") : "read", Fast);
        Assert.Equal("read", result);
        Assert.Equal(3, calls);
    }

    [Fact]
    public void A_failure_that_persists_surfaces_after_the_last_retry()
    {
        var calls = 0;
        Assert.Throws<IOException>(() => IoRetry.Execute(() => { calls++; throw new IOException("stale handle"); }, Fast));
        Assert.Equal(4, calls);
    }

    [Theory]
    [InlineData(typeof(FileNotFoundException))]
    [InlineData(typeof(DirectoryNotFoundException))]
    [InlineData(typeof(UnauthorizedAccessException))]
    [InlineData(typeof(EndOfStreamException))]
    public void Failures_that_cannot_pass_are_not_retried(Type exceptionType)
    {
        var calls = 0;
        var thrown = Assert.Throws(exceptionType, () => IoRetry.Execute(() => { calls++; throw (Exception)Activator.CreateInstance(exceptionType)!; }, Fast));
        Assert.IsType(exceptionType, thrown);
        Assert.Equal(1, calls);
    }

    [Fact]
    public void The_default_pipeline_retries_too()
    {
        var calls = 0;
        IoRetry.Execute(() => { if (++calls == 1) throw new IOException("blip"); });
        Assert.Equal(2, calls);
    }
}

public class LoadBenchmarkTests
{
    [Fact]
    public void Reads_every_tensor_and_every_file_byte()
    {
        using var dir = new TempDir();
        var tensors = Enumerable.Range(0, 4).Select(i => ($"w{i}", TorchSharp.torch.ones(64, 64))).ToList();
        CheckpointWriter.Write(dir.Path, tensors, maxShardBytes: 2 * 64 * 64 * 4);
        var result = LoadBenchmark.Run(dir.Path, repeats: 3, TestContext.Current.CancellationToken);
        Assert.Equal(4 * 64 * 64 * 4, result.Bytes);
        Assert.Equal(Directory.GetFiles(dir.Path, "*.safetensors").Sum(f => new FileInfo(f).Length), result.FileBytes);
        Assert.Equal(4, result.Tensors);
        Assert.Equal(2, result.Files);
        Assert.Equal(3, result.Repeats);
        Assert.Equal(result.Bytes / result.CheckpointSeconds / 1e9, result.CheckpointGBps, 6);
        Assert.Equal(result.FileBytes / result.SequentialSeconds / 1e9, result.SequentialGBps, 6);
        foreach (var (_, t) in tensors) t.Dispose();
    }
}
