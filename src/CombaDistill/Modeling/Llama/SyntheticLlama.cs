using System.Text;
using CombaDistill.IO;
using CombaDistill.Tokenization;
using static TorchSharp.torch;

namespace CombaDistill.Modeling.Llama;

/// <summary>
/// A Hugging Face Llama folder of any shape with random weights, for benchmarks at real sizes where no checkpoint can
/// be downloaded: config.json, safetensors shards (matrices ~ N(0, 0.02²) as Hugging Face initialises them, norms 1),
/// and a byte-level tiktoken <c>tokenizer.model</c> of exactly the configured vocabulary (the 256 bytes, then byte
/// pairs, then byte triples, each mergeable from earlier ranks, plus Llama 3's 256 special tokens), so text data
/// tokenizes and every id is used.
/// </summary>
public static class SyntheticLlama
{
    public const double InitStd = 0.02;

    public static void Write(string folder, LlamaConfig config, long seed, CancellationToken cancellationToken = default, bool force = false)
    {
        var ranks = config.VocabSize - Llama3Tokenizer.SpecialTokenCount;
        if (ranks < 256) throw new ArgumentException($"a vocabulary of {config.VocabSize} leaves {ranks} BPE ranks; the synthetic tokenizer needs 256 bytes + {Llama3Tokenizer.SpecialTokenCount} special tokens at least");
        config = config with { BosTokenId = ranks, EosTokenIds = [ranks + 1] };
        using var output = AtomicDirectory.Create(folder, force);
        var plan = config.Tensors()
            .Select(t => new PlannedTensor(t.Name, LlamaForCausalLM.ParseDtype(config.TorchDtype), t.Shape)).ToList();
        // drawn on the CPU: TorchSharp's Generator is a CPU generator (a CUDA tensor's normal_ refuses it, seen on the
        // H200), and the same seed then gives the same weights on any machine
        var generator = new TorchSharp.torch.Generator((ulong)seed, CPU);
        CheckpointWriter.WriteStreaming(output.Path, plan, name =>
        {
            cancellationToken.ThrowIfCancellationRequested();
            var planned = plan.First(t => t.Name == name);
            var value = name.EndsWith("norm.weight", StringComparison.Ordinal)
                ? ones(planned.Shape, ScalarType.Float32)
                : empty(planned.Shape, ScalarType.Float32).normal_(0, InitStd, generator);
            return value.to(planned.DType);
        }, maxShardBytes: 2_000_000_000);
        AtomicFile.WriteAllText(Path.Combine(output.Path, "config.json"), config.ToJson().ToJsonString() + "\n");
        File.WriteAllText(Path.Combine(output.Path, "tokenizer.model"), TiktokenRanks(ranks));
        output.Commit();
    }

    /// <summary>"base64 rank" lines: bytes 0–255, then byte pairs, then byte triples, until <paramref name="count"/> ranks.</summary>
    public static string TiktokenRanks(int count)
    {
        var text = new StringBuilder();
        var rank = 0;
        void Add(params byte[] token) => text.Append(Convert.ToBase64String(token)).Append(' ').Append(rank++).Append('\n');
        for (var a = 0; a < 256 && rank < count; a++) Add((byte)a);
        for (var a = 0; a < 256 && rank < count; a++)
            for (var b = 0; b < 256 && rank < count; b++) Add((byte)a, (byte)b);
        for (var a = 0; a < 256 && rank < count; a++)
            for (var b = 0; b < 256 && rank < count; b++)
                for (var c = 0; c < 256 && rank < count; c++) Add((byte)a, (byte)b, (byte)c);
        if (rank < count) throw new ArgumentException($"{count} ranks need tokens longer than three bytes");
        return text.ToString();
    }
}
