using CombaDistill.Ops;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Ops;

public class CombaBenchmarkTests
{
    [Fact]
    public void Reports_every_method_with_consistent_rates_and_ratios()
    {
        var shape = new BenchShape(2, 40, 2, 8);
        var results = CombaBenchmark.Run(CPU, [shape, new BenchShape(1, 100, 1, 4)], ScalarType.Float32,
            new CombaBenchOptions { Warmup = 0, Repeats = 1, ChunkSize = 16, NaiveBackwardMaxBytes = 1 << 20 }, cancellation: TestContext.Current.CancellationToken);
        Assert.Equal(6, results.Count);
        Assert.Equal(["sdpa", "chunkwise", "naive"], results.Take(3).Select(r => r.Method));
        foreach (var r in results)
        {
            var sdpa = results.Single(s => s.Shape == r.Shape && s.Method == "sdpa");
            Assert.True(r.ForwardMs > 0);
            Assert.Equal(r.Shape.Tokens / (r.ForwardMs!.Value / 1000), r.ForwardTokensPerSecond!.Value, 6);
            Assert.Equal(r.ForwardMs!.Value / sdpa.ForwardMs!.Value, r.ForwardTimeRatioToSdpa!.Value, 12);
            if (r.Note is not null) continue;
            Assert.True(r.ForwardBackwardMs > 0);
            Assert.Equal(r.ForwardBackwardMs!.Value / sdpa.ForwardBackwardMs!.Value, r.ForwardBackwardTimeRatioToSdpa!.Value, 12);
        }
        // Naive's backward estimate is 6·B·T·H·D²·4 bytes: 245,760 and 38,400 here, both under 1 MiB; one byte less
        // than 38,400 skips Naive's forward+backward (not its forward) for the second shape.
        Assert.NotNull(results[2].ForwardBackwardMs);
        Assert.NotNull(results[5].ForwardBackwardMs);
        var limited = CombaBenchmark.Run(CPU, [new BenchShape(1, 100, 1, 4)], ScalarType.Float32,
            new CombaBenchOptions { Warmup = 0, Repeats = 1, ChunkSize = 16, NaiveBackwardMaxBytes = 38_399 }, cancellation: TestContext.Current.CancellationToken);
        var skipped = limited[2];
        Assert.Equal("naive", skipped.Method);
        Assert.NotNull(skipped.ForwardMs);
        Assert.Null(skipped.ForwardBackwardMs);
        Assert.Contains("forward+backward skipped", skipped.Note);
    }

    [Theory]
    [InlineData("4,2048,8,64", 4, 2048, 8, 64)]
    [InlineData("(1, 8192, 32, 128)", 1, 8192, 32, 128)]
    public void Shapes_parse(string text, int b, int t, int h, int d) => Assert.Equal(new BenchShape(b, t, h, d), BenchShape.Parse(text));

    [Theory]
    [InlineData("4,2048,8")]
    [InlineData("4,2048,0,64")]
    [InlineData("a,b,c,d")]
    public void Bad_shapes_are_clear_errors(string text) =>
        Assert.Contains("B,T,H,D", Assert.Throws<ArgumentException>(() => BenchShape.Parse(text)).Message);
}
