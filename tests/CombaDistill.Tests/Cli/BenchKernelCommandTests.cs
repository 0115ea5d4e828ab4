using System.Text.Json.Nodes;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests.Cli;

/// <summary><c>bench kernel</c> run as a user runs it: the table on stdout, progress on stderr, JSON in the file.</summary>
public class BenchKernelCommandTests
{
    [Fact]
    public void Prints_a_table_and_writes_JSON_with_counts_and_floors()
    {
        using var temp = new TempDir();
        var json = temp["kernel.json"];
        var (code, stdout, stderr) = CliProcess.Run("bench", "kernel", "--device", "cpu", "--shape", "1,40,2,8",
            "--repeats", "1", "--warmup", "0", "--input-sets", "1", "--chunk-size", "16", "--ops", "fused,sdpa", "--json", json);
        Assert.True(code == 0, stderr);
        foreach (var text in new[] { "(1,40,2,8)", "fused", "sdpa", "×floor", "fwd+bwd ms", "wall clock" })
            Assert.Contains(text, stdout);
        Assert.Contains("bench (1,40,2,8) fused", stderr);
        var results = BenchReportShapeTests.AssertShape(json, stdout, "kernel");
        var report = JsonNode.Parse(File.ReadAllText(json))!;
        Assert.Equal("cpu", (string)report["device"]!);
        Assert.Equal(790.0, (double)report["settings"]!["peakTflops"]!);
        Assert.Equal(["fused", "sdpa"], results.Select(r => (string)r!["op"]!));
        // SDPA forward: 2·B·H·T²·D FLOPs (causal), q, k, v, o of 4 bytes each
        Assert.Equal(2.0 * 2 * 40 * 40 * 8, (double)results[1]!["forwardFlops"]!);
        Assert.Equal(4.0 * 2 * 40 * 8 * 4, (double)results[1]!["forwardBytes"]!);
        Assert.All(results, r => Assert.True((double)r!["forwardBackwardMs"]! > 0));
        Assert.Equal(1.0, (double)results[1]!["forwardTimeRatioToSdpa"]!);
        // on the CPU the default peaks (a GPU's) give no ×floor; this device's own peaks bring it back
        Assert.All(results, r => Assert.Null(r!["forwardTimesFloor"]));
        Assert.Contains("no ×floor", stdout);
        // one peak alone would leave the other at the GPU's default: still no ×floor
        var onePeak = CliProcess.Run("bench", "kernel", "--device", "cpu", "--shape", "1,40,2,8", "--repeats", "1", "--warmup", "0",
            "--input-sets", "1", "--chunk-size", "16", "--ops", "sdpa", "--forward-only", "--peak-tflops", "1", "--json", json);
        Assert.True(onePeak.Code == 0, onePeak.Stderr);
        Assert.Null(JsonNode.Parse(File.ReadAllText(json))!["rows"]![0]!["forwardTimesFloor"]);
        var withPeaks = CliProcess.Run("bench", "kernel", "--device", "cpu", "--shape", "1,40,2,8", "--repeats", "1", "--warmup", "0",
            "--input-sets", "1", "--chunk-size", "16", "--ops", "sdpa", "--forward-only", "--peak-tflops", "1", "--peak-tbps", "0.1", "--threads", "1", "--json", json);
        Assert.True(withPeaks.Code == 0, withPeaks.Stderr);
        var row = JsonNode.Parse(File.ReadAllText(json))!["rows"]![0]!;
        // against the peaks given (1 TFLOP/s, 0.1 TB/s), not the GPU's defaults
        var floorMs = 1000 * Math.Max((double)row["forwardFlops"]! / 1e12, (double)row["forwardBytes"]! / 0.1e12);
        Assert.Equal((double)row["forwardMs"]! / floorMs, (double)row["forwardTimesFloor"]!, 9);
    }

    [Theory]
    [InlineData("--ops", "fused,flash", "--ops fused,flash")]
    [InlineData("--chunk-size", "48", "--chunk-size 48")]
    [InlineData("--shape", "1,2,3", "B,T,H,D")]
    public void Bad_options_exit_2_with_one_line(string option, string value, string expected)
    {
        var (code, stdout, stderr) = CliProcess.Run("bench", "kernel", "--device", "cpu", option, value);
        Assert.Equal(2, code);
        Assert.Contains(expected, stderr);
        Assert.Equal("", stdout);
    }
}
