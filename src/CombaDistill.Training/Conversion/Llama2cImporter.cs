using System.Buffers.Binary;
using CombaDistill.IO;
using CombaDistill.Modeling.Llama;
using CombaDistill.Tokenization;
using Microsoft.Win32.SafeHandles;
using static TorchSharp.torch;

namespace CombaDistill.Conversion;

/// <summary>The 7 int32 at the start of a llama2.c legacy (version 0) checkpoint.</summary>
public sealed record Llama2cHeader(int Dim, int HiddenDim, int NumLayers, int NumHeads, int NumKeyValueHeads, int VocabSize, int SeqLen, bool SharedClassifier)
{
    public const int Bytes = 7 * sizeof(int);
    public int HeadSize => Dim / NumHeads;
    public int KvDim => NumKeyValueHeads * HeadSize;

    public LlamaConfig ToConfig() => new()
    {
        ModelType = "llama",
        VocabSize = VocabSize,
        HiddenSize = Dim,
        IntermediateSize = HiddenDim,
        NumHiddenLayers = NumLayers,
        NumAttentionHeads = NumHeads,
        NumKeyValueHeads = NumKeyValueHeads,
        HeadDim = HeadSize,
        MaxPositionEmbeddings = SeqLen,
        RmsNormEps = 1e-5,
        RopeTheta = 10000,
        TieWordEmbeddings = SharedClassifier,
        TorchDtype = "float32",
        BosTokenId = 1,
        EosTokenIds = [2],
    };
}

/// <summary>
/// Imports a llama2.c legacy checkpoint (<c>export.py --version 0</c>, what run.c reads) and its
/// tokenizer as a Hugging Face Llama folder: config.json, model.safetensors, tokenizer.bin (the
/// llama2.c file, byte for byte) and tokenizer.model (the same vocabulary as SentencePiece).
/// </summary>
/// <remarks>
/// llama2.c rotates adjacent pairs (2i, 2i+1) of each head; Hugging Face rotates i with i + D/2.
/// Reordering the rows of wq and wk per head — even rows first, then odd rows — turns one into the
/// other (the permutation of Hugging Face's Llama converter), so q·k and therefore the logits are
/// unchanged. Everything else is a rename.
/// </remarks>
public static class Llama2cImporter
{
    /// <summary>llama2.c's version-1+ exports start with this magic ("ak42"), which this importer does not read.</summary>
    const uint VersionedMagic = 0x616b3432;

    public static Llama2cHeader ReadHeader(string binPath)
    {
        InputFile.RequireRegular(binPath, "llama2.c checkpoint");
        var length = new FileInfo(binPath).Length;
        if (length < Llama2cHeader.Bytes)
            throw new InvalidInputException(binPath, $"llama2.c checkpoint is truncated: {length} bytes, shorter than its {Llama2cHeader.Bytes}-byte header");
        Span<byte> raw = stackalloc byte[Llama2cHeader.Bytes];
        using (var stream = File.OpenRead(binPath)) stream.ReadExactly(raw);
        var f = new int[7];
        for (var i = 0; i < 7; i++) f[i] = BinaryPrimitives.ReadInt32LittleEndian(raw[(4 * i)..]);
        if ((uint)f[0] == VersionedMagic)
            throw new InvalidInputException(binPath, "is a versioned llama2.c export (magic \"ak42\"); only the legacy version-0 format (export.py --version 0) is supported");

        var header = new Llama2cHeader(f[0], f[1], f[2], f[3], f[4], Math.Abs(f[5]), f[6], SharedClassifier: f[5] > 0);
        var text = $"dim={f[0]}, hidden_dim={f[1]}, n_layers={f[2]}, n_heads={f[3]}, n_kv_heads={f[4]}, vocab_size={f[5]}, seq_len={f[6]}";
        string? problem =
            f.Where((_, i) => i != 5).Any(v => v <= 0) || f[5] is 0 or int.MinValue ? "every field must be positive (vocab_size may be negative: a separate classifier)"
            : f[0] % f[3] != 0 ? "dim is not a multiple of n_heads"
            : f[3] % f[4] != 0 ? "n_heads is not a multiple of n_kv_heads"
            : header.HeadSize % 2 != 0 ? "the head size dim/n_heads is odd, so rotary pairs do not fit"
            : null;
        if (problem is not null) throw new InvalidInputException(binPath, $"not a llama2.c legacy checkpoint header ({text}): {problem}");

        var expected = Layout(header).End;
        if (expected != length)
            throw new InvalidInputException(binPath, $"llama2.c checkpoint is {length} bytes but its header ({text}) implies {expected}: the file is {(length < expected ? "truncated" : "longer than the model it describes")} or not a legacy version-0 export");
        return header;
    }

    /// <summary>The file's tensors under Hugging Face names: each with its byte offset, its llama2.c shape [out, in], and the heads to re-pair for rotary (0: none).</summary>
    sealed record Block(string Name, long Offset, long[] Shape, int RotaryHeads);

    sealed record FileLayout(IReadOnlyList<Block> Blocks, long End);

    static FileLayout Layout(Llama2cHeader h)
    {
        long dim = h.Dim, hidden = h.HiddenDim, kv = h.KvDim, vocab = h.VocabSize, layers = h.NumLayers;
        var blocks = new List<Block>();
        long offset = Llama2cHeader.Bytes;
        // One tensor per layer in each of run.c's stacked arrays, in file order.
        void Stacked(string name, long[] shape, int rotaryHeads = 0)
        {
            var bytes = shape.Aggregate(4L, (a, b) => checked(a * b));
            for (var l = 0; l < layers; l++, offset = checked(offset + bytes))
                blocks.Add(new Block($"model.layers.{l}.{name}", offset, shape, rotaryHeads));
        }
        void Single(string? name, long[] shape)
        {
            if (name is not null) blocks.Add(new Block(name, offset, shape, 0));
            offset = checked(offset + shape.Aggregate(4L, (a, b) => checked(a * b)));
        }
        try
        {
            Single("model.embed_tokens.weight", [vocab, dim]);
            Stacked("input_layernorm.weight", [dim]);
            Stacked("self_attn.q_proj.weight", [dim, dim], h.NumHeads);
            Stacked("self_attn.k_proj.weight", [kv, dim], h.NumKeyValueHeads);
            Stacked("self_attn.v_proj.weight", [kv, dim]);
            Stacked("self_attn.o_proj.weight", [dim, dim]);
            Stacked("post_attention_layernorm.weight", [dim]);
            Stacked("mlp.gate_proj.weight", [hidden, dim]);   // w1
            Stacked("mlp.down_proj.weight", [dim, hidden]);   // w2
            Stacked("mlp.up_proj.weight", [hidden, dim]);     // w3
            Single("model.norm.weight", [dim]);
            Single(null, [h.SeqLen, h.HeadSize / 2]);         // freq_cis_real, unused
            Single(null, [h.SeqLen, h.HeadSize / 2]);         // freq_cis_imag, unused
            if (!h.SharedClassifier) Single("lm_head.weight", [vocab, dim]);
        }
        catch (OverflowException) { return new FileLayout(blocks, long.MaxValue); }
        return new FileLayout(blocks, offset);
    }

    /// <summary>The model's config and its weights in Hugging Face's names and layout (float32, CPU).</summary>
    public static (LlamaConfig Config, Dictionary<string, Tensor> Weights) Read(string binPath)
    {
        var header = ReadHeader(binPath);
        using var file = File.OpenHandle(binPath);
        var weights = Layout(header).Blocks.ToDictionary(b => b.Name, b => ReadBlock(file, binPath, b).DetachFromDisposeScope());
        return (header.ToConfig(), weights);
    }

    static Tensor ReadBlock(SafeFileHandle file, string path, Block block)
    {
        using var scope = NewDisposeScope();
        var raw = empty(block.Shape, ScalarType.Float32);
        TensorBytes.ReadInto(file, block.Offset, raw, path);
        if (block.RotaryHeads == 0) return raw.MoveToOuterDisposeScope();
        // Per head, rows (2i, 2i+1) — llama2.c's rotary pair — become rows (i, i + head/2).
        var (rows, cols) = (block.Shape[0], block.Shape[1]);
        return raw.view(block.RotaryHeads, rows / block.RotaryHeads / 2, 2, cols).transpose(1, 2).reshape(rows, cols).contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Writes the Hugging Face folder <paramref name="outFolder"/> all at once (built in a temporary
    /// sibling and renamed). An existing folder is refused unless <paramref name="force"/>.
    /// </summary>
    public static void Import(string binPath, string tokenizerPath, string outFolder, bool force, IProgress<string>? progress = null, CancellationToken cancellationToken = default)
    {
        var header = ReadHeader(binPath);
        if (!File.Exists(tokenizerPath)) throw new InvalidInputException(tokenizerPath, "llama2.c tokenizer file not found (pass the tokenizer.bin / tok512.bin the model was trained with)");
        var tokenizer = Llama2cTokenizer.Load(tokenizerPath, expectedVocabSize: header.VocabSize);
        var layout = Layout(header);

        using var folder = AtomicDirectory.Create(outFolder, force);
        progress?.Report($"writing {Checkpoint.SingleFileName}: {layout.Blocks.Count} tensors");
        using (var file = File.OpenHandle(binPath))
        {
            var byName = layout.Blocks.ToDictionary(b => b.Name);
            var plan = layout.Blocks.Select(b => new PlannedTensor(b.Name, ScalarType.Float32, b.Shape)).ToList();
            CheckpointWriter.WriteStreaming(folder.Path, plan, name =>
            {
                cancellationToken.ThrowIfCancellationRequested();
                return ReadBlock(file, binPath, byName[name]);
            }, maxShardBytes: 5L << 30, metadata: new Dictionary<string, string> { ["format"] = "pt" });
        }
        progress?.Report("writing config.json and the tokenizer");
        AtomicFile.WriteAllText(Path.Combine(folder.Path, "config.json"), header.ToConfig().ToJson().ToJsonString(new() { WriteIndented = true }) + "\n");
        File.Copy(tokenizerPath, Path.Combine(folder.Path, "tokenizer.bin"));
        tokenizer.WriteSentencePieceModel(Path.Combine(folder.Path, "tokenizer.model"));
        AtomicFile.WriteAllText(Path.Combine(folder.Path, "tokenizer_config.json"), HuggingFaceTokenizerConfig(header.SeqLen));
        cancellationToken.ThrowIfCancellationRequested();
        folder.Commit();
        progress?.Report($"imported {Path.GetFileName(binPath)} into {folder.FinalPath}");
    }

    /// <summary>
    /// Tells Hugging Face how to use tokenizer.model the way llama2.c does: BOS in front, and the
    /// SentencePiece dummy prefix (without add_prefix_space, transformers 5 encodes "Once" as "O","n","ce"
    /// instead of " Once": seen on the GPU host with transformers 5.17).
    /// </summary>
    static string HuggingFaceTokenizerConfig(int maxLength) => new System.Text.Json.Nodes.JsonObject
    {
        ["tokenizer_class"] = "LlamaTokenizer",
        ["add_bos_token"] = true,
        ["add_eos_token"] = false,
        ["add_prefix_space"] = true,
        ["legacy"] = true,
        ["bos_token"] = "<s>",
        ["eos_token"] = "</s>",
        ["unk_token"] = "<unk>",
        ["model_max_length"] = maxLength,
        ["clean_up_tokenization_spaces"] = false,
    }.ToJsonString(new() { WriteIndented = true }) + "\n";
}
