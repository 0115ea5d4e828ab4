using System.CommandLine;
using CombaDistill.Modeling.Llama;
using Spectre.Console;

namespace CombaDistill.Cli;

/// <summary>
/// <c>synth</c> (hidden; for benchmarks): a random-weight Llama folder of a given shape, by default Llama-3.2-1B's
/// (hidden 2048, 16 layers, 32 heads over 8 KV heads, intermediate 8192, vocabulary 128256, tied embeddings).
/// </summary>
static class SynthCommand
{
    public static Command Create()
    {
        var output = new Option<string>("--out") { Description = "folder to create", Required = true };
        var hidden = new Option<int>("--hidden") { Description = "hidden size", DefaultValueFactory = _ => 2048 };
        var layers = new Option<int>("--layers") { Description = "decoder layers", DefaultValueFactory = _ => 16 };
        var heads = new Option<int>("--heads") { Description = "attention heads (head dim = hidden / heads)", DefaultValueFactory = _ => 32 };
        var kvHeads = new Option<int>("--kv-heads") { Description = "key/value heads", DefaultValueFactory = _ => 8 };
        var intermediate = new Option<int>("--intermediate") { Description = "MLP intermediate size", DefaultValueFactory = _ => 8192 };
        var vocab = new Option<int>("--vocab") { Description = "vocabulary size", DefaultValueFactory = _ => 128256 };
        var untied = new Option<bool>("--untied") { Description = "a separate lm_head (default: tied to the embeddings)" };
        var context = new Option<int>("--context") { Description = "max_position_embeddings", DefaultValueFactory = _ => 8192 };
        var seed = new Option<long>("--seed") { Description = "seed for the random weights", DefaultValueFactory = _ => 0 };
        var force = new Option<bool>("--force") { Description = "replace an earlier model folder at --out" };
        var command = new Command("synth", "Write a random-weight Llama folder of a given shape (for benchmarks)")
        {
            output, hidden, layers, heads, kvHeads, intermediate, vocab, untied, context, seed, force,
        };
        command.Hidden = true;
        command.SetAction(CliCommon.Run((parse, ct) =>
        {
            CliCommon.Start(parse);
            var config = new LlamaConfig
            {
                ModelType = "llama", HiddenSize = parse.GetValue(hidden), NumHiddenLayers = parse.GetValue(layers), NumAttentionHeads = parse.GetValue(heads),
                NumKeyValueHeads = parse.GetValue(kvHeads), HeadDim = parse.GetValue(hidden) / parse.GetValue(heads), IntermediateSize = parse.GetValue(intermediate),
                VocabSize = parse.GetValue(vocab), TieWordEmbeddings = !parse.GetValue(untied), MaxPositionEmbeddings = parse.GetValue(context),
                RopeTheta = 500000, RmsNormEps = 1e-5, TorchDtype = "bfloat16",
            };
            var folder = parse.GetValue(output)!;
            SyntheticLlama.Write(folder, config, parse.GetValue(seed), ct, parse.GetValue(force));
            CliCommon.Err.MarkupLineInterpolated($"[green]wrote[/] {folder}: {config.NumHiddenLayers} layers, hidden {config.HiddenSize}, vocabulary {config.VocabSize}, random weights");
            return 0;
        }));
        return command;
    }
}
