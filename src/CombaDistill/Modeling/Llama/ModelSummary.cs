using CombaDistill.IO;
using CombaDistill.Tokenization;

namespace CombaDistill.Modeling.Llama;

/// <summary>One weight file of a checkpoint and its size on disk.</summary>
public sealed record WeightFile(string Name, long Bytes);

/// <summary>
/// What a Hugging Face Llama-family folder holds, read from config.json and the safetensors headers
/// only (no weights are loaded): parameters per part, dtypes, files, tokenizer and memory needs.
/// </summary>
public sealed record ModelSummary(
    string Folder,
    LlamaConfig Config,
    IReadOnlyDictionary<string, long> ParametersByPart,
    long TotalParameters,
    IReadOnlyList<string> WeightDtypes,
    IReadOnlyList<WeightFile> Files,
    long WeightBytes,
    string Tokenizer,
    int Context,
    long KvCacheBytes)
{
    /// <summary>The parts parameters are counted in, in display order.</summary>
    public static readonly string[] Parts = ["embeddings", "attention", "mlp", "norms", "head", "other"];

    /// <param name="context">Tokens the KV cache is sized for (batch 1); default max_position_embeddings.</param>
    public static ModelSummary Inspect(string folder, int? context = null)
    {
        if (context is <= 0) throw new ArgumentException($"--context must be positive, got {context}");
        ModelFolder.Require(folder);
        var config = LlamaConfig.Load(Path.Combine(folder, "config.json"));
        using var checkpoint = Checkpoint.Open(folder);
        var byPart = Parts.ToDictionary(p => p, _ => 0L);
        foreach (var name in checkpoint.Names)
        {
            // A stored copy of a tied classifier is not a parameter of its own.
            if (config.TieWordEmbeddings && name == "lm_head.weight") continue;
            byPart[PartOf(name)] += checkpoint.Info(name).NumberOfElements;
        }
        var dtypes = checkpoint.Names.Select(n => checkpoint.Info(n).DType).Distinct().Order().ToList();
        var cacheDtype = checkpoint.Contains("model.embed_tokens.weight") ? checkpoint.Info("model.embed_tokens.weight").DType : dtypes.FirstOrDefault() ?? "F32";
        var tokens = context ?? config.MaxPositionEmbeddings;
        // keys and values, per layer, per KV head, per head dimension, per token
        var kvBytes = 2L * config.NumHiddenLayers * config.NumKeyValueHeads * config.HeadDim * tokens * SafeTensorsDType.ItemSize(cacheDtype);
        return new ModelSummary(
            folder, config, byPart, byPart.Values.Sum(), dtypes,
            checkpoint.Files.Select(f => new WeightFile(Path.GetFileName(f), new FileInfo(f).Length)).ToList(),
            checkpoint.TotalBytes, DescribeTokenizer(folder, config), tokens, kvBytes);
    }

    /// <summary>Which part of a Llama-family model a tensor belongs to (the student keeps the same names).</summary>
    internal static string PartOf(string name) =>
        name.StartsWith("model.embed_tokens.", StringComparison.Ordinal) ? "embeddings"
        : name.Contains(".self_attn.", StringComparison.Ordinal) ? "attention"
        : name.Contains(".mlp.", StringComparison.Ordinal) ? "mlp"
        : name.Contains("norm.", StringComparison.Ordinal) ? "norms"
        : name.StartsWith("lm_head.", StringComparison.Ordinal) ? "head"
        : "other";

    internal static string DescribeTokenizer(string folder, LlamaConfig config)
    {
        try
        {
            var tokenizer = TokenizerLoader.ForModel(folder, config.VocabSize, config.BosTokenId, config.EosTokenIds[0]);
            return $"{tokenizer.Description}; {tokenizer.SpecialTokensInUse()}";
        }
        catch (InvalidInputException e) { return $"none usable ({e.Message})"; }
    }
}
