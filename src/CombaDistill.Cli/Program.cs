using System.CommandLine;
using CombaDistill.Cli;

var root = new RootCommand("CombaDistill: turn a pretrained Llama-family Transformer into a Comba (bilinear RNN) student and distill it.");
root.Options.Add(CliCommon.DeviceOption);
root.Options.Add(CliCommon.LibTorchOption);
root.Options.Add(CliCommon.VerboseOption);
foreach (var command in CliCommands.All()) root.Subcommands.Add(command);
// "combadistill help [COMMAND]", as many tools take it, is that command's --help.
if (args is ["help", .. var helpFor]) args = [.. helpFor, "--help"];
var parse = root.Parse(args);
// A command line that does not parse is bad input like any other: an error (CliCommon.ParseError) and exit 2, not the help text.
if (parse.Errors.Count > 0 && parse.Action is not System.CommandLine.Help.HelpAction)
    return CliCommon.ParseError(parse);
// System.CommandLine's help writes nothing at all for a hidden command (synth). One asked for by name is shown like any
// other; Hidden only keeps it out of the root's list of commands, which this invocation does not print.
if (parse.Action is System.CommandLine.Help.HelpAction && parse.CommandResult.Command.Hidden)
    parse.CommandResult.Command.Hidden = false;
// Ctrl-C and SIGTERM are handled here rather than by System.CommandLine, whose handler throws on a second signal
// (CliSignals): the first cancels the command's token, a second is only acknowledged.
using var signals = new CliSignals();
return await parse.InvokeAsync(new InvocationConfiguration { ProcessTerminationTimeout = null, EnableDefaultExceptionHandler = false }, signals.Token);
