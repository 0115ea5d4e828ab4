using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using CombaDistill.Conversion;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests.Cli;

/// <summary>convert, and inspect and generate on its output, run as the user runs them: the built CLI in its own process.</summary>
public class ConvertCommandTests
{

    [Fact]
    public void Convert_prints_the_report_and_its_student_works_with_inspect_and_generate()
    {
        using var temp = new TempDir();
        var teacher = TeacherFolders.ImportStories260K(temp["teacher"]);
        var student = temp["student"];

        var (code, stdout, stderr) = CliProcess.Run("convert", "--from", teacher, "--out", student, "--keep-attention", "every:5", "--output-norm", "--chunk-size", "32", "--device", "cpu");
        Assert.True(code == 0, stderr);
        var report = ConversionReport.FromJson(File.ReadAllText(Path.Combine(student, ConversionReport.FileName)));
        Assert.Equal([4], report.AttentionLayers);
        Assert.Contains("extra parameters", stdout);
        Assert.Contains($"{report.ExtraParameters:N0}", stdout);
        Assert.Contains("attention (kept)", stdout);
        Assert.Contains("a_proj.weight", stdout);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(student, "config.json")))!;
        Assert.Equal("comba", config["model_type"]!.GetValue<string>());
        Assert.True(config["comba_output_norm"]!.GetValue<bool>());
        Assert.Equal(32, config["comba_chunk_size"]!.GetValue<int>());

        var inspect = CliProcess.Run("inspect", student, "--json");
        Assert.True(inspect.Code == 0, inspect.Stderr);
        var summary = JsonNode.Parse(inspect.Stdout)!;
        Assert.Equal(report.StudentParameters, summary["total_parameters"]!.GetValue<long>());
        Assert.Equal(report.ExtraParameters, summary["comba"]!["comba_parameters"]!.GetValue<long>());
        Assert.Equal(new[] { 4 }, summary["comba"]!["attention_layers"]!.AsArray().Select(n => n!.GetValue<int>()));
        // what the folder is comes from its own config.json; the teacher-shaped backbone is reported beside it
        Assert.Equal("comba", summary["config"]!["model_type"]!.GetValue<string>());
        Assert.Equal("CombaForCausalLM", summary["config"]!["architectures"]![0]!.GetValue<string>());
        Assert.Equal("llama", summary["teacher_architecture"]!["model_type"]!.GetValue<string>());
        var table = CliProcess.Run("inspect", student);
        Assert.True(table.Code == 0, table.Stderr);
        Assert.Matches(@"model_type\s*│\s*comba \(a Comba student of a llama teacher\)", table.Stdout);

        var generate = CliProcess.Run("generate", "--model", student, "--prompt", "Once upon a time", "--max-tokens", "12", "--temperature", "0", "--device", "cpu");
        Assert.True(generate.Code == 0, generate.Stderr);
        Assert.Contains("12 tokens", generate.Stderr);
        Assert.NotEmpty(generate.Stdout.Trim());

        // an existing output is refused with exit code 2 and one line naming it; nothing changes
        var again = CliProcess.Run("convert", "--from", teacher, "--out", student);
        Assert.Equal(2, again.Code);
        Assert.Contains("--force", again.Stderr);
        Assert.Equal(report.ToJson(), File.ReadAllText(Path.Combine(student, ConversionReport.FileName)));

        var bad = CliProcess.Run("convert", "--from", teacher, "--out", temp["other"], "--keep-attention", "every:zero");
        Assert.Equal(2, bad.Code);
        Assert.Contains("--keep-attention", bad.Stderr);
        Assert.False(Directory.Exists(temp["other"]));
    }

    [Fact]
    public void Convert_without_out_writes_beside_the_teacher_says_where_and_refuses_to_overwrite_without_force()
    {
        using var temp = new TempDir();
        var teacher = TeacherFolders.ImportStories260K(temp["stories"]);
        var expected = temp["stories-comba"];

        var first = CliProcess.Run("convert", "--from", teacher + "/", "--device", "cpu");
        Assert.True(first.Code == 0, first.Stderr);
        Assert.Contains($"writing the student to {expected}", first.Stderr);
        Assert.True(File.Exists(Path.Combine(expected, "config.json")));
        var written = File.ReadAllBytes(Path.Combine(expected, "model.safetensors"));

        var again = CliProcess.Run("convert", "--from", teacher, "--device", "cpu", "--keep-attention", "all");
        Assert.Equal(2, again.Code);
        Assert.Contains("--force", again.Stderr);
        Assert.Equal(written, File.ReadAllBytes(Path.Combine(expected, "model.safetensors")));

        var forced = CliProcess.Run("convert", "--from", teacher, "--device", "cpu", "--keep-attention", "all", "--force");
        Assert.True(forced.Code == 0, forced.Stderr);
        Assert.NotEqual(written, File.ReadAllBytes(Path.Combine(expected, "model.safetensors")));
    }
}
