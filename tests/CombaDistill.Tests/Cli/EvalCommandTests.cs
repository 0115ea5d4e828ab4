using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using CombaDistill.Tests.Modeling;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests.Cli;

/// <summary><c>eval</c> run as users run it: the built CLI in its own process, the table on stdout, diagnostics on stderr.</summary>
public class EvalCommandTests(ImportedStories260K stories) : IClassFixture<ImportedStories260K>
{

    [Fact]
    public void Eval_prints_the_table_and_writes_the_report_files()
    {
        using var temp = new TempDir();
        var mc = temp["mc.jsonl"];
        File.WriteAllLines(mc, ["""{"ctx": "Once upon a time, there was a little girl named", "endings": [" Lily.", " table."], "label": 0}"""]);
        var (code, stdout, stderr) = CliProcess.Run("eval", "--model", stories.Folder, "--teacher", stories.Folder, "--tasks", $"ppl,agreement,mqar,mc:{mc}",
            "--data", Shared.TinyStoriesValid, "--max-tokens", "512", "--mqar-pairs", "4", "--mqar-lengths", "64", "--mqar-samples", "2",
            "--out", temp["report"], "--json", temp["copy.json"], "--device", "cpu");
        Assert.True(code == 0, stderr);
        Assert.Contains("NLL (nats/token)", stdout);
        Assert.Contains("1.3112", stdout);
        Assert.Contains("student ÷ teacher", stdout);
        Assert.DoesNotContain("wrote", stdout);
        Assert.Contains("wrote", stderr);
        Assert.Equal(["mqar_recall.png", "report.json", "report.md"], Directory.GetFiles(temp["report"]).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Equal(File.ReadAllText(Path.Combine(temp["report"], "report.json")), File.ReadAllText(temp["copy.json"]));
        var json = JsonNode.Parse(File.ReadAllText(temp["copy.json"]))!;
        Assert.Equal(1.3112, json["perplexity"]!["model"]!["nll"]!.GetValue<double>(), 0.001);
        Assert.Equal(0.0, json["agreement"]!["meanKl"]!.GetValue<double>());
        Assert.Equal(1, json["multipleChoice"]!["model"]!["items"]!.GetValue<int>());
    }

    [Fact]
    public void Bad_inputs_exit_2_naming_the_file_and_line()
    {
        using var temp = new TempDir();
        var mc = temp["mc.jsonl"];
        File.WriteAllLines(mc, ["""{"query": "q", "choices": ["a", "b"], "gold": 0}""", """{"query": "q", "choices": ["a", "b"], "gold": 3}"""]);
        var bad = CliProcess.Run("eval", "--model", stories.Folder, "--tasks", $"mc:{mc}", "--device", "cpu");
        Assert.Equal(2, bad.Code);
        Assert.Equal("", bad.Stdout);
        Assert.Contains($"{mc}: line 2: gold index 3 is out of range for 2 choices", bad.Stderr.ReplaceLineEndings(""));

        var empty = temp["empty.txt"];
        File.WriteAllText(empty, "");
        var noData = CliProcess.Run("eval", "--model", stories.Folder, "--tasks", "ppl", "--data", empty, "--device", "cpu");
        Assert.Equal(2, noData.Code);
        Assert.Contains($"{empty}: data file is empty", noData.Stderr.ReplaceLineEndings(""));

        // the default tasks include perplexity: without --data the error comes before the model loads, with the way out
        var defaults = CliProcess.Run("eval", "--model", stories.Folder, "--device", "cpu");
        Assert.Equal(2, defaults.Code);
        Assert.DoesNotContain("loaded", defaults.Stderr);
        Assert.Contains("ppl needs a text file (--data FILE); the default tasks need it", defaults.Stderr);
        Assert.Contains("--tasks mqar,passkey,speed", defaults.Stderr);

        var noTeacher = CliProcess.Run("eval", "--model", stories.Folder, "--tasks", "agreement", "--device", "cpu");
        Assert.Equal(2, noTeacher.Code);
        Assert.DoesNotContain("loaded", noTeacher.Stderr);
        Assert.Contains("the agreement task needs a teacher (--teacher)", noTeacher.Stderr);

        var unknown = CliProcess.Run("eval", "--model", stories.Folder, "--tasks", "ppl,bleu", "--data", Shared.TinyStoriesValid, "--device", "cpu");
        Assert.Equal(2, unknown.Code);
        Assert.Contains("unknown task 'bleu'", unknown.Stderr);

        var notes = temp["notes.txt"];
        File.WriteAllText(notes, "mine");
        var outIsFile = CliProcess.Run("eval", "--model", stories.Folder, "--tasks", "ppl", "--data", Shared.TinyStoriesValid, "--out", notes, "--device", "cpu");
        Assert.Equal(2, outIsFile.Code);
        Assert.Contains($"{notes}: is a file; --out must be a folder", outIsFile.Stderr.ReplaceLineEndings(""));
        Assert.Equal("mine", File.ReadAllText(notes));
    }
}
