using System.CommandLine;
using CombaDistill.Cli;

var root = new RootCommand("CombaDistill: turn a pretrained Llama-family Transformer into a Comba (bilinear RNN) student and distill it.");
root.Options.Add(CliCommon.DeviceOption);
root.Options.Add(CliCommon.LibTorchOption);
foreach (var command in CliCommands.All()) root.Subcommands.Add(command);
return await root.Parse(args).InvokeAsync();
