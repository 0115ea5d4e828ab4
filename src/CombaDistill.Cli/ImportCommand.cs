using System.CommandLine;
using CombaDistill.Conversion;
using Spectre.Console;

namespace CombaDistill.Cli;

/// <summary><c>import</c>: a llama2.c legacy checkpoint and tokenizer become a Hugging Face Llama folder.</summary>
static class ImportCommand
{
    public static Command Create()
    {
        var from = new Option<string>("--from") { Description = "llama2.c checkpoint (.bin, legacy version 0)", Required = true };
        var tokenizer = new Option<string>("--tokenizer") { Description = "llama2.c tokenizer (tokenizer.bin / tok512.bin)", Required = true };
        var output = new Option<string>("--out") { Description = "folder to create", Required = true };
        var force = new Option<bool>("--force") { Description = "replace the output folder if it exists" };
        var command = new Command("import", "Import a llama2.c checkpoint as a Hugging Face Llama folder (config.json, model.safetensors, tokenizer.bin, tokenizer.model)")
        {
            from, tokenizer, output, force,
        };
        command.SetAction(CliCommon.Run((parse, ct) =>
        {
            CliCommon.Start(parse);
            Llama2cImporter.Import(parse.GetValue(from)!, parse.GetValue(tokenizer)!, parse.GetValue(output)!, parse.GetValue(force), new StderrProgress(), ct);
            return 0;
        }));
        return command;
    }

    /// <summary>Reports on the calling thread, so messages appear in order before the command returns.</summary>
    sealed class StderrProgress : IProgress<string>
    {
        public void Report(string value) => CliCommon.Err.WriteLine(value);
    }
}
