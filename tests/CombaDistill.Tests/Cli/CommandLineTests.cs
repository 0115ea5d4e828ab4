using CombaDistill.Runtime;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests.Cli;

/// <summary>
/// Command lines that do not parse, and asking for help: the mistake the user made comes first, with the nearest
/// real name when one is close; the other errors follow briefly; exit 2. Help is text on standard output, exit 0.
/// </summary>
public class CommandLineTests
{
    /// <summary>The lines of standard error, after checking exit 2 and that nothing went to standard output.</summary>
    static string[] UsageError((int Code, string Stdout, string Stderr) result)
    {
        Assert.True(result.Code == 2, $"exit {result.Code}: {result.Stderr}");
        Assert.Equal("", result.Stdout);
        var lines = result.Stderr.TrimEnd('\n').Split('\n');
        Assert.StartsWith("error: ", lines[0]);
        return lines;
    }

    [Fact]
    public void A_mistyped_command_is_named_first_with_the_command_it_is_close_to()
    {
        var lines = UsageError(CliProcess.Run("inspct", "some/model"));
        // the parser's "Required command was not provided" and the stray argument only restate the one mistake
        Assert.Equal(["error: unknown command 'inspct'; did you mean 'inspect'? (see 'combadistill --help')"], lines);

        Assert.Equal(["error: unknown command 'lod' for 'bench'; did you mean 'load'? (see 'combadistill bench --help')"], UsageError(CliProcess.Run("bench", "lod")));
        var far = Assert.Single(UsageError(CliProcess.Run("frobnicate")));
        Assert.Equal("error: unknown command 'frobnicate' (see 'combadistill --help')", far);
    }

    [Fact]
    public void A_mistyped_option_gets_the_close_option_and_the_other_errors_follow_one_per_line()
    {
        var lines = UsageError(CliProcess.Run("distill", "--rundir", "x"));
        Assert.Equal("error: unknown option '--rundir' for 'distill'; did you mean '--run-dir'? (see 'combadistill distill --help')", lines[0]);
        // 'x' was the value of --rundir, not a mistake of its own
        Assert.Equal(["  also: Option '--recipe' is required", "  also: Option '--run-dir' is required"], lines[1..]);

        // options shared by every command (--device) are known to each one
        Assert.Contains("did you mean '--device'?", UsageError(CliProcess.Run("inspect", "m", "--devcie", "cpu"))[0]);
    }

    [Fact]
    public void Many_errors_list_a_few_then_count_the_rest()
    {
        var lines = UsageError(CliProcess.Run("generate", "--model", "m", "--tempreature", "0", "--max-tokns", "3", "--a", "--b", "--c"));
        Assert.Equal(
        [
            "error: unknown option '--tempreature' for 'generate'; did you mean '--temperature'? (see 'combadistill generate --help')",
            "  also: unknown option '--max-tokns' for 'generate'; did you mean '--max-tokens'?",
            "  also: unknown option '--a' for 'generate'",
            "  also: unknown option '--b' for 'generate'",
            "  (and 1 more)",
        ], lines);
    }

    [Fact]
    public void A_missing_command_lists_the_commands()
    {
        var lines = UsageError(CliProcess.Run("bench"));
        Assert.Equal(["error: 'bench' needs a command: one of load, comba, convert, kernel, distill (see 'combadistill bench --help')"], lines);
        var root = Assert.Single(UsageError(CliProcess.Run()));
        Assert.StartsWith("error: combadistill needs a command: one of import, inspect, generate, convert, export, distill, corpus, bench, eval (", root);
    }

    [Fact]
    public void Help_as_a_command_shows_the_help()
    {
        var (code, stdout, stderr) = CliProcess.Run("help");
        Assert.True(code == 0, stderr);
        Assert.Equal("", stderr);
        Assert.Equal(CliProcess.Run("--help").Stdout, stdout);
        Assert.Contains("Commands:", stdout);

        var inspect = CliProcess.Run("help", "inspect");
        Assert.True(inspect.Code == 0, inspect.Stderr);
        Assert.Equal(CliProcess.Run("inspect", "--help").Stdout, inspect.Stdout);
        Assert.Contains("Describe a model folder", inspect.Stdout);
    }
    [Fact]
    public void A_hidden_command_shows_its_help_when_asked_by_name_and_stays_out_of_the_list()
    {
        var (code, stdout, stderr) = CliProcess.Run("synth", "--help");
        Assert.True(code == 0, stderr);
        Assert.Contains("Write a random-weight Llama folder", stdout);
        Assert.Contains("--out", stdout);
        Assert.Contains("--kv-heads", stdout);
        Assert.Equal(stdout, CliProcess.Run("help", "synth").Stdout);
        Assert.DoesNotContain("synth", CliProcess.Run("--help").Stdout);
    }
    [Fact]
    public void The_version_is_the_one_bench_reports_carry()
    {
        var (code, stdout, stderr) = CliProcess.Run("--version");
        Assert.True(code == 0, stderr);
        // bench tables and JSON are stamped with the library's version; both come from Directory.Build.props
        Assert.Equal(BenchReport.ProductVersion, stdout.Trim());
        Assert.Matches(@"^\d+\.\d+\.\d+(\+[0-9a-f]+)?$", stdout.Trim());
    }
}
