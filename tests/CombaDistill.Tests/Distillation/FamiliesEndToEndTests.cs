using System.Text.Json.Nodes;
using CombaDistill.Modeling.Llama;
using CombaDistill.Tests.Conversion;
using CombaDistill.Tests.Modeling;
using CombaDistill.Tests.Support;
using CombaDistill.Tests.Tokenization;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Distillation;

/// <summary>
/// A Qwen2-shaped and a Mistral-shaped teacher, each with a real tokenizer.json, through everything a user runs:
/// inspect, convert, distill (two steps of each of the three stages), eval against the teacher, generate. The
/// teachers are tiny with random weights; what is checked is that every command works on these families.
/// </summary>
public class FamiliesEndToEndTests
{
    /// <summary>Qwen2.5's layout: q/k/v biases, tied embeddings, GQA, the embedding padded past the tokenizer's 151,669 ids.</summary>
    static LlamaConfig Qwen2 => new()
    {
        ModelType = "qwen2", VocabSize = 151936, HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 2,
        NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 8, MaxPositionEmbeddings = 256, RmsNormEps = 1e-6,
        RopeTheta = 1000000, TieWordEmbeddings = true, QkvBias = true, BosTokenId = 151643, EosTokenIds = [151643],
    };

    /// <summary>Mistral's layout: GQA and a sliding window (8) shorter than the training sequences (32).</summary>
    static LlamaConfig Mistral => new()
    {
        ModelType = "mistral", VocabSize = 32000, HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 2,
        NumAttentionHeads = 4, NumKeyValueHeads = 1, HeadDim = 8, MaxPositionEmbeddings = 256, RmsNormEps = 1e-5,
        RopeTheta = 1000000, SlidingWindow = 8, BosTokenId = 1, EosTokenIds = [2],
    };

    [Theory]
    [InlineData("qwen2", "qwen3", "byte-level BPE tokenizer.json, 151,669 tokens", "BOS <|endoftext|> = 151643, EOS <|endoftext|> = 151643")]
    [InlineData("mistral", "llama2", "SentencePiece-style BPE tokenizer.json, 32,000 tokens", "BOS <s> = 1, EOS </s> = 2")]
    public void Convert_distill_eval_and_generate_work_on_the_family(string family, string tokenizer, string kind, string specials)
    {
        using var temp = new TempDir();
        var config = family == "qwen2" ? Qwen2 : Mistral;
        var teacher = temp["teacher"];
        using (NewDisposeScope()) TeacherFolders.Write(teacher, config, TinyModels.RandomWeights(config, seed: 21), ScalarType.Float32);
        var tokenizerFolder = TokenizerReference.TokenizerFolder(tokenizer);
        foreach (var file in new[] { "tokenizer.json", "tokenizer_config.json" })
            File.Copy(Path.Combine(tokenizerFolder, file), Path.Combine(teacher, file));

        var inspect = CliProcess.Run("inspect", teacher, "--json");
        Assert.True(inspect.Code == 0, inspect.Stderr);
        var description = (string?)JsonNode.Parse(inspect.Stdout)!["tokenizer"];
        Assert.Contains(kind, description);
        Assert.EndsWith(specials, description);

        var student = temp["student"];
        var convert = CliProcess.Run("convert", "--from", teacher, "--out", student, "--device", "cpu");
        Assert.True(convert.Code == 0, convert.Stderr);

        var recipe = temp["recipe.yaml"];
        File.WriteAllText(recipe, $$"""
            seed: 3
            teacher: { path: {{teacher}} }
            student: { path: {{student}} }
            data:
              train: { path: {{Shared.TinyStoriesTrain}}, max_tokens: 1500 }
              validation: { path: {{Shared.TinyStoriesValid}}, max_tokens: 200 }
              add_bos: true
              add_eos: false
              eval_tokens: 64
            stages:
              - { name: align, objective: attention_alignment, optimizer: { lr: 1e-3 }, steps: 2, sequence_length: 32, micro_batch: 1, log_every: 1, eval_every: 100, checkpoint_every: 2 }
              - { name: kd, objective: distillation, optimizer: { lr: 1e-3 }, steps: 2, sequence_length: 32, micro_batch: 1, log_every: 1, eval_every: 100, checkpoint_every: 2 }
              - { name: long, objective: fine_tuning, optimizer: { lr: 1e-4 }, steps: 2, sequence_length: 48, micro_batch: 1, ce_weight: 0.1, log_every: 1, eval_every: 100, checkpoint_every: 2 }
            """);
        var run = temp["run"];
        var distill = CliProcess.Run("distill", "--recipe", recipe, "--run-dir", run, "--device", "cpu", "--threads", "1", "--no-tensorboard");
        Assert.True(distill.Code == 0, distill.Stderr + distill.Stdout);
        var distilled = Path.Combine(run, "student");
        Assert.True(File.Exists(Path.Combine(distilled, "config.json")));

        var eval = CliProcess.Run("eval", "--model", distilled, "--teacher", teacher, "--tasks", "ppl,agreement", "--data", Shared.TinyStoriesValid,
            "--max-tokens", "128", "--out", temp["report"], "--device", "cpu");
        Assert.True(eval.Code == 0, eval.Stderr);
        var report = JsonNode.Parse(File.ReadAllText(Path.Combine(temp["report"], "report.json")))!;
        Assert.NotNull(report["teacher"]);

        var generate = CliProcess.Run("generate", "--model", distilled, "--prompt", "Once upon a time", "--max-tokens", "6", "--temperature", "0", "--device", "cpu");
        Assert.True(generate.Code == 0, generate.Stderr);
        Assert.Contains("6 tokens", generate.Stderr);
    }
}
