using System.CommandLine;
using System.Diagnostics;
using System.Text;
using CombaDistill.Modeling;
using CombaDistill.Tokenization;
using Spectre.Console;
using ScalarType = TorchSharp.torch.ScalarType;

namespace CombaDistill.Cli;

/// <summary><c>generate</c>: text from a model folder. Standard output carries only the generated text, streamed as it is produced.</summary>
static class GenerateCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "Hugging Face model folder (config.json, safetensors, tokenizer)", Required = true };
        var prompt = new Option<string>("--prompt") { Description = "text to continue (empty: start from BOS)", DefaultValueFactory = _ => "" };
        var maxTokens = new Option<int>("--max-tokens") { Description = "tokens to generate", DefaultValueFactory = _ => 256 };
        var temperature = new Option<double>("--temperature") { Description = "0 is greedy", DefaultValueFactory = _ => 1.0 };
        var topP = new Option<double>("--top-p") { Description = "nucleus sampling threshold (1 keeps every token)", DefaultValueFactory = _ => 1.0 };
        var seed = new Option<long?>("--seed") { Description = "seed for sampling (reproducible output)" };
        var dtype = CliCommon.DTypeOption("the dtype to run in (default: the checkpoint's torch_dtype)", ScalarType.Float32, ScalarType.BFloat16);
        var threads = CliCommon.ThreadsOption();
        var command = new Command("generate", "Generate text with a model")
        {
            model, prompt, maxTokens, temperature, topP, seed, dtype, threads,
        };
        command.SetAction(CliCommon.Run((parse, ct) =>
        {
            var device = CliCommon.Start(parse);
            CliCommon.SetThreads(parse.GetValue(threads));
            var folder = parse.GetValue(model)!;
            var options = new GenerationOptions(parse.GetValue(maxTokens), parse.GetValue(temperature), parse.GetValue(topP), parse.GetValue(seed));
            options.Validate();
            var clock = Stopwatch.StartNew();
            var lm = CausalLMLoader.Load(folder, parse.GetValue(dtype), device);
            using var loaded = (IDisposable)lm;   // a teacher or a student, both modules
            var tokenizer = TokenizerLoader.ForModel(folder, lm.Config.VocabSize, lm.Config.BosTokenId, lm.Config.EosTokenIds[0]);
            CliCommon.Err.WriteLine($"loaded {folder} ({(lm is CombaDistill.Modeling.Comba.CombaForCausalLM ? $"comba student of a {lm.Config.ModelType}" : lm.Config.ModelType)}, {tokenizer.Description}) on {device.type} in {clock.Elapsed.TotalSeconds:F1}s");

            var ids = tokenizer.Encode(parse.GetValue(prompt) ?? "", addBos: true);
            if (ids.Length == 0) ids = [tokenizer.BosId];
            // nothing stops a model past its trained context (a Comba student has no cache to outgrow), but what it writes
            // there is extrapolation: say so once, on stderr, so stdout stays the text
            var trained = lm.Config.MaxPositionEmbeddings;
            // the last generated token is never fed back: positions 0 … prompt + max-tokens − 2 are used
            if ((long)ids.Length + options.MaxTokens - 1 > trained)
                CliCommon.Err.WriteLine($"note: the prompt ({ids.Length} tokens) and --max-tokens ({options.MaxTokens}) go past the model's max_position_embeddings ({trained}); tokens after position {trained} are beyond what it was trained on");
            var decoder = new StreamingDecoder(tokenizer, previousId: ids[^1]);
            using var stdout = new StreamWriter(Console.OpenStandardOutput(), new UTF8Encoding(encoderShouldEmitUTF8Identifier: false));
            clock.Restart();
            var count = 0;
            foreach (var id in Generation.Generate(lm, ids, options, ct))
            {
                stdout.Write(decoder.Append(id));
                stdout.Flush();
                count++;
            }
            stdout.Write(decoder.Flush());
            stdout.Flush();
            // The newline a terminal wants goes to stderr, so stdout stays exactly the generated text.
            CliCommon.Err.WriteLine();
            CliCommon.Err.WriteLine($"{count} tokens in {clock.Elapsed.TotalSeconds:F2}s ({count / Math.Max(clock.Elapsed.TotalSeconds, 1e-9):F1} tokens/s)");
            return 0;
        }));
        return command;
    }
}
