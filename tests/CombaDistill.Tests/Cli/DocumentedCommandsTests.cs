using System.Text.RegularExpressions;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests.Cli;

/// <summary>
/// The command lines the README and docs/ show exist: every <c>combadistill WORD</c> in code names a command of the
/// built CLI, and every option a documented command line gives is one that command's --help lists.
/// </summary>
public partial class DocumentedCommandsTests
{
    /// <summary>The options each command lists in its --help ("bench kernel" for a subcommand), from the built CLI.</summary>
    static readonly Lazy<Dictionary<string, HashSet<string>>> Commands = new(() =>
    {
        var commands = new Dictionary<string, HashSet<string>>();
        void Add(string path)
        {
            var (code, stdout, stderr) = CliProcess.Run([.. path.Split(' ', StringSplitOptions.RemoveEmptyEntries), "--help"]);
            Assert.True(code == 0, stderr);
            commands[path] = [.. OptionName().Matches(stdout).Select(m => m.Value)];
            // the "Commands:" section lists each subcommand as an indented name; synth is hidden, so asked for by name
            var section = stdout.Split("Commands:") is [_, var list] ? list : "";
            foreach (var sub in SubcommandLine().Matches(section).Select(m => m.Groups[1].Value)) Add($"{path} {sub}".Trim());
        }
        Add("");
        Add("synth");
        commands["help"] = commands[""];   // "combadistill help [COMMAND]" is --help (Program.cs)
        return commands;
    });

    /// <summary>Inline code spans and the lines of indented or fenced code blocks, from every markdown file the project keeps.</summary>
    public static TheoryData<string> Documents() =>
        [.. Directory.GetFiles(Path.Combine(Shared.RepoRoot, "docs"), "*.md").Append(Path.Combine(Shared.RepoRoot, "README.md"))
            .Append(Path.Combine(Shared.RepoRoot, "tools", "README.md")).Select(p => Path.GetRelativePath(Shared.RepoRoot, p))];

    static IEnumerable<(int Line, string Code)> CodeOf(string path)
    {
        var fenced = false;
        var number = 0;
        foreach (var line in File.ReadLines(path))
        {
            number++;
            if (line.TrimStart().StartsWith("```", StringComparison.Ordinal)) { fenced = !fenced; continue; }
            if (fenced || line.StartsWith("    ", StringComparison.Ordinal)) { yield return (number, line); continue; }
            foreach (Match span in InlineCode().Matches(line)) yield return (number, span.Groups[1].Value);
        }
    }

    [Theory]
    [MemberData(nameof(Documents))]
    public void Every_documented_command_and_option_exists(string document)
    {
        var problems = Problems(document, CodeOf(Path.Combine(Shared.RepoRoot, document)));
        Assert.True(problems.Count == 0, string.Join("\n", problems));
    }

    [Fact]
    public void The_check_finds_a_command_or_an_option_that_does_not_exist()
    {
        // what docs/recipes.md once said, a mistyped option, and lines that are right: the check must be able to fail
        var problems = Problems("doc.md", [
            (1, "the same as `combadistill import-llama2c`"),
            (2, "combadistill distill --recipe r.yaml --rundir runs/x"),
            (3, "combadistill bench kernel --repeats 3 --threads 1"),
            (4, "combadistill import --from a.bin --tokenizer t.bin --out m"),
        ]);
        Assert.Equal(["doc.md:1: no command 'import-llama2c'", "doc.md:2: 'distill' has no option --rundir"], problems.Select(p => p.Split(" in: ")[0]));
    }

    static List<string> Problems(string document, IEnumerable<(int Line, string Code)> lines)
    {
        var commands = Commands.Value;
        var problems = new List<string>();
        foreach (var (line, code) in lines)
        {
            // "combadistill WORD [WORD]": the command (and bench's subcommand) must exist
            string? command = null;
            if (Invocation().Match(code) is { Success: true } invoked)
            {
                var words = invoked.Groups[1].Value.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                command = words.Length == 2 && commands.ContainsKey($"{words[0]} {words[1]}") ? $"{words[0]} {words[1]}" : words[0];
                if (!commands.ContainsKey(command)) { problems.Add($"{document}:{line}: no command '{command}' in: {code.Trim()}"); continue; }
            }
            // a span that starts with a command's name (the README's table of commands) is a command line too
            else if (code.Split(' ', StringSplitOptions.RemoveEmptyEntries) is [var first, ..] && commands.ContainsKey(first) && first != "")
                command = code.Split(' ') is [_, var second, ..] && commands.ContainsKey($"{first} {second}") ? $"{first} {second}" : first;
            if (command is null) continue;
            // options up to the next command line on the same line (a pipe, &&, a second invocation) belong to this one
            var own = Regex.Split(code[code.IndexOf(command.Split(' ')[^1], StringComparison.Ordinal)..], @"\||&&|;|combadistill")[0];
            foreach (var option in OptionName().Matches(own).Select(m => m.Value))
                if (!commands[command].Contains(option) && !commands[""].Contains(option))
                    problems.Add($"{document}:{line}: '{command}' has no option {option} in: {code.Trim()}");
        }
        return problems;
    }

    [GeneratedRegex(@"(?<![\w-])--[a-z][a-z0-9-]*")]
    private static partial Regex OptionName();

    [GeneratedRegex(@"^\s{2}([a-z][a-z0-9-]*)\b", RegexOptions.Multiline)]
    private static partial Regex SubcommandLine();

    [GeneratedRegex(@"`([^`]+)`")]
    private static partial Regex InlineCode();

    /// <summary>
    /// combadistill followed by a word that is not an option, a placeholder or an ellipsis; "the combadistill command" in
    /// the README's source tree is prose.
    /// </summary>
    [GeneratedRegex(@"(?<![\w/.-])(?<!the )combadistill ([a-z][a-z0-9-]*(?: [a-z][a-z0-9-]*)?)")]
    private static partial Regex Invocation();
}
