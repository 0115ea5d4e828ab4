using System.CommandLine;
using CombaDistill.Conversion;
using CombaDistill.Export;
using ScalarType = TorchSharp.torch.ScalarType;

namespace CombaDistill.Cli;

/// <summary><c>export</c>: a Comba student becomes a Hugging Face folder that transformers loads with trust_remote_code.</summary>
static class ExportCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "the student folder (made by convert or distill)", Required = true };
        var output = new Option<string>("--out") { Description = "the folder to create", Required = true };
        var dtype = CliCommon.DTypeOption("the weights' dtype (default: the student's stored dtype)", ScalarType.BFloat16, ScalarType.Float16, ScalarType.Float32);
        var maxShard = new Option<string>("--max-shard-size") { Description = "split model.safetensors into shards of at most this size", DefaultValueFactory = _ => "5GB" };
        var run = new Option<string?>("--run-dir") { Description = "the distillation run folder for the model card (default: the student's parent, when it is one)" };
        var eval = new Option<string?>("--eval") { Description = "an eval output folder (report.json, report.md) whose results go into the model card (default: RUN/eval)" };
        var force = new Option<bool>("--force") { Description = "replace an existing output folder" };
        var command = new Command("export", "Write a student as a Hugging Face transformers folder (modeling code, safetensors, tokenizer, model card)")
        {
            model, output, dtype, maxShard, run, eval, force,
        };
        command.SetAction(CliCommon.Run((parse, ct) =>
        {
            CliCommon.Start(parse);
            var result = HuggingFaceExport.Export(parse.GetValue(model)!, parse.GetValue(output)!, new ExportOptions
            {
                DType = parse.GetValue(dtype),
                MaxShardBytes = ByteSize.Parse(parse.GetValue(maxShard)!),
                Force = parse.GetValue(force),
                RunFolder = parse.GetValue(run),
                EvalFolder = parse.GetValue(eval),
            }, ct);
            Console.Out.WriteLine($"exported {result.Parameters:N0} parameters as {result.DType} to {result.Folder}");
            Console.Out.WriteLine($"files: {string.Join(", ", result.Files)}");
            if (result.RunFolder is not null) Console.Out.WriteLine($"model card: recipe and results from {result.RunFolder}");
            if (result.EvalFolder is not null) Console.Out.WriteLine($"model card: eval report from {result.EvalFolder}");
            return 0;
        }));
        return command;
    }
}
