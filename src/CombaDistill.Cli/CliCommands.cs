using System.CommandLine;

namespace CombaDistill.Cli;

/// <summary>Every command; each lives in its own file as a static Create().</summary>
static class CliCommands
{
    public static IEnumerable<Command> All() =>
    [
        ImportCommand.Create(),
        InspectCommand.Create(),
        GenerateCommand.Create(),
        ConvertCommand.Create(),
        ExportCommand.Create(),
        DistillCommand.Create(),
        CorpusCommand.Create(),
        BenchCommand.Create(),
        EvalCommand.Create(),
        SynthCommand.Create(),
    ];
}
