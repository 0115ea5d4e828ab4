using System.CommandLine;
using CombaDistill.Distillation;
using CombaDistill.Modeling;
using Spectre.Console;

namespace CombaDistill.Cli;

/// <summary><c>corpus</c>: a teacher-sampled token file for data-free distillation (a recipe's <c>train</c> data).</summary>
static class CorpusCommand
{
    public static Command Create()
    {
        var teacher = new Option<string>("--teacher") { Description = "model folder to sample from", Required = true };
        var tokens = new Option<string>("--tokens") { Description = "tokens to write (BOS included): 2000, 2k, 1.5m, 1e6, as in recipes", Required = true };
        var output = new Option<string>("--out") { Description = "token file to write (.tokens, format in docs/recipes.md)", Required = true };
        var batch = new Option<int>("--batch") { Description = "sequences sampled side by side", DefaultValueFactory = _ => 32 };
        var length = new Option<int>("--length") { Description = "tokens sampled after each BOS", DefaultValueFactory = _ => 256 };
        var temperature = new Option<double>("--temperature") { Description = "sampling temperature (0 is greedy)", DefaultValueFactory = _ => 1.0 };
        var topP = new Option<double>("--top-p") { Description = "nucleus sampling threshold", DefaultValueFactory = _ => 1.0 };
        var seed = new Option<long>("--seed") { Description = "seed: the same seed writes the same file", DefaultValueFactory = _ => 1234 };
        var force = new Option<bool>("--force") { Description = "replace --out if it is a token file" };
        var threads = CliCommon.ThreadsOption();
        var command = new Command("corpus", "Write a corpus sampled from a teacher, for distillation without data")
        {
            teacher, tokens, output, batch, length, temperature, topP, seed, force, threads,
        };
        command.SetAction(CliCommon.Run((parse, ct) =>
        {
            var options = new CorpusOptions
            {
                Tokens = WholeNumber.Parse(parse.GetValue(tokens)!, "--tokens"), Batch = parse.GetValue(batch), Length = parse.GetValue(length),
                Temperature = parse.GetValue(temperature), TopP = parse.GetValue(topP), Seed = parse.GetValue(seed), Force = parse.GetValue(force),
            };
            options.Validate();
            TeacherCorpus.CheckOutput(parse.GetValue(output)!, options.Force);   // before the teacher loads, so a wrong --out fails at once
            var device = CliCommon.Start(parse);
            CliCommon.SetThreads(parse.GetValue(threads));
            var model = CausalLMLoader.Load(parse.GetValue(teacher)!, device: device);
            long written = 0;
            // redrawn from the sampling thread only, as distill's bars are (docs/runtime.md: no other thread allocates)
            CliCommon.Err.Progress().AutoRefresh(false)
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn()).Start(context =>
            {
                var bar = context.AddTask("sampling", maxValue: options.Tokens);
                written = TeacherCorpus.Write(model, parse.GetValue(output)!, options, new Bar(bar, context), ct);
            });
            CliCommon.Err.WriteLine($"wrote {written:N0} tokens to {parse.GetValue(output)}");
            return 0;
        }));
        return command;
    }

    /// <summary>Reported once per batch of sampled sequences.</summary>
    sealed class Bar(ProgressTask task, ProgressContext context) : IProgress<long>
    {
        public void Report(long value)
        {
            task.Value = value;
            context.Refresh();
        }
    }
}
