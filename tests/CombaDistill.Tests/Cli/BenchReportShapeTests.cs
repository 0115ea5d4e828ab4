using System.Text.Json.Nodes;
using CombaDistill.Runtime;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests.Cli;

/// <summary>
/// Every <c>bench</c> command writes the same result shape: the same top-level fields, rows keyed by the declared
/// columns, and a table on stdout whose headings are those columns'.
/// </summary>
public class BenchReportShapeTests
{
    static readonly string[] TopLevel = ["benchmark", "title", "device", "timing", "date", "version", "settings", "columns", "rows", "notes", "withinBounds"];

    /// <summary>Asserts the shared shape of one command's JSON and table; returns its rows.</summary>
    internal static JsonArray AssertShape(string json, string stdout, string benchmark)
    {
        var report = JsonNode.Parse(File.ReadAllText(json))!.AsObject();
        Assert.Equal(TopLevel.Order(), report.Select(p => p.Key).Order());
        Assert.Equal(benchmark, (string)report["benchmark"]!);
        Assert.StartsWith(BenchReport.ProductVersion, (string)report["version"]!);
        var columns = report["columns"]!.AsArray();
        var keys = columns.Select(c => (string)c!["key"]!).ToArray();
        var rows = report["rows"]!.AsArray();
        Assert.NotEmpty(rows);
        Assert.All(rows, r => Assert.Equal(keys.Order(), r!.AsObject().Select(p => p.Key).Order()));
        foreach (var column in columns.Where(c => (bool)c!["inTable"]! && (string)c!["title"]! != ""))
            Assert.Contains((string)column!["title"]!, stdout);
        Assert.Contains((string)report["timing"]!, stdout.Replace("\n", " ").Replace("  ", " "));
        return rows;
    }

    [Fact]
    public void Convert_refuses_a_size_whose_limit_its_largest_tensor_alone_would_break_and_writes_nothing()
    {
        using var temp = new TempDir();
        var (code, stdout, stderr) = CliProcess.Run("bench", "convert", "--size", "20MB", "--work", temp["work"]);
        Assert.Equal(2, code);
        Assert.Equal("", stdout);
        Assert.Contains("--size 20MB is below 2", stderr);
        Assert.False(Directory.Exists(temp["work"]));
    }

    [Fact]
    public void Load_writes_the_shared_shape()
    {
        using var temp = new TempDir();
        var json = temp["load.json"];
        var model = TeacherFolders.ImportStories260K(temp["teacher"]);
        var (code, stdout, stderr) = CliProcess.Run("bench", "load", model, "--repeats", "1", "--json", json);
        Assert.True(code == 0, stderr);
        var rows = AssertShape(json, stdout, "load");
        Assert.Equal(["checkpoint (every tensor)", "sequential FileStream"], rows.Select(r => (string)r!["read"]!));
        Assert.All(rows, r => Assert.True((double)r!["gigabytesPerSecond"]! > 0));
    }

    [Fact]
    public void A_row_that_misses_a_column_is_refused()
    {
        var report = new BenchReport
        {
            Benchmark = "x", Title = "t", Device = "cpu", Timing = "wall clock",
            Columns = [new("a", "A", BenchUnit.Count), new("b", "B", BenchUnit.Milliseconds)],
            Rows = [new Dictionary<string, object?> { ["a"] = 1 }],
        };
        Assert.Contains("differ from the columns", Assert.Throws<InvalidOperationException>(report.Checked).Message);
    }
}
