using System.CommandLine;
using CombaDistill.Cli;

var root = new RootCommand("CombaDistill: turn a pretrained Llama-family Transformer into a Comba (bilinear RNN) student and distill it.");
root.Options.Add(CliCommon.DeviceOption);
root.Options.Add(CliCommon.LibTorchOption);
foreach (var command in CliCommands.All()) root.Subcommands.Add(command);
// Ctrl-C and SIGTERM cancel the command's token only where asked for: without a ProcessTerminationTimeout,
// System.CommandLine 2.0.0 installs no handler and the signal kills the process on the spot. A command then has 2 s
// to return; a distillation keeps the process alive until it has saved its checkpoint (DistillCommand).
return await root.Parse(args).InvokeAsync(new InvocationConfiguration { ProcessTerminationTimeout = TimeSpan.FromSeconds(2) });
