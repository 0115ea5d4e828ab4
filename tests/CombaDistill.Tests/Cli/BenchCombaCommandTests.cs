using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests.Cli;

/// <summary><c>bench comba</c> run as a user runs it: the table on stdout, progress on stderr, JSON in the file.</summary>
public class BenchCombaCommandTests
{

    [Fact]
    public void Prints_a_table_and_writes_JSON_for_every_shape_and_method()
    {
        using var temp = new TempDir();
        var json = temp["bench.json"];
        var (code, stdout, stderr) = CliProcess.Run("bench", "comba", "--device", "cpu", "--shape", "1,40,2,8", "--shape", "2,20,1,4",
            "--repeats", "1", "--warmup", "0", "--chunk-size", "16", "--json", json);
        Assert.True(code == 0, stderr);
        foreach (var text in new[] { "(1,40,2,8)", "(2,20,1,4)", "sdpa", "chunkwise", "naive", "fwd+bwd ×SDPA" })
            Assert.Contains(text, stdout);
        Assert.DoesNotContain("bench (1,40,2,8)", stdout);    // progress goes to stderr
        var results = BenchReportShapeTests.AssertShape(json, stdout, "comba");
        Assert.Equal(6, results.Count);
        Assert.Equal(["sdpa", "chunkwise", "naive", "sdpa", "chunkwise", "naive"], results.Select(r => (string)r!["method"]!));
        Assert.All(results, r => Assert.True((double)r!["forwardBackwardMs"]! > 0));
        Assert.Equal(1.0, (double)results[0]!["forwardTimeRatioToSdpa"]!);
        Assert.Equal("(1,40,2,8)", (string)results[0]!["shape"]!);
    }

    [Theory]
    [InlineData("--shape", "1,40,2", "B,T,H,D")]
    [InlineData("--chunk-size", "48", "--chunk-size 48")]
    [InlineData("--dtype", "int8", "--dtype int8")]
    public void Bad_options_exit_2_with_one_line(string option, string value, string expected)
    {
        var (code, stdout, stderr) = CliProcess.Run("bench", "comba", "--device", "cpu", option, value);
        Assert.Equal(2, code);
        Assert.Contains(expected, stderr);
        Assert.Equal("", stdout);
    }
}
