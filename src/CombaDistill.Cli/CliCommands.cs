using System.CommandLine;

namespace CombaDistill.Cli;

/// <summary>Every command; each lives in its own file as a static Create().</summary>
static class CliCommands
{
    public static IEnumerable<Command> All() =>
    [
        BenchCommand.Create(),
        EvalCommand.Create(),
    ];
}
