using System.Buffers.Binary;
using System.Text.Json.Nodes;
using CombaDistill.Conversion;
using CombaDistill.IO;
using CombaDistill.Modeling.Llama;
using CombaDistill.Tests.Support;
using CombaDistill.Tokenization;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Conversion;

public class Llama2cImporterTests
{
    static readonly CancellationToken Ct = TestContext.Current.CancellationToken;

    static void AssertLogitsMatch(double[][] expected, Tensor actual)
    {
        var scale = Math.Max(1, expected.Max(row => row.Max(Math.Abs)));
        for (var t = 0; t < expected.Length; t++)
        {
            var row = actual[0, t].to(ScalarType.Float64).data<double>().ToArray();
            for (var v = 0; v < row.Length; v++) Assert.True(Math.Abs(row[v] - expected[t][v]) <= 1e-5 * scale, $"position {t}, token {v}: {row[v]} vs {expected[t][v]}");
        }
    }

    [Fact]
    public void Imported_model_equals_a_direct_llama2c_forward_on_the_raw_weights()
    {
        using var temp = new TempDir();
        Llama2cImporter.Import(Shared.Stories260KBin, Shared.Tok512Bin, temp["m"], force: false, cancellationToken: Ct);
        using var model = LlamaForCausalLM.FromPretrained(temp["m"]);
        int[] ids = [1, .. Llama2cTokenizer.Load(Shared.Tok512Bin).Encode("Once upon a time there was a dog named Max. He", addBos: false)];
        Assert.True(ids.Length > 10);
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var logits = model.forward(tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Length]));
        AssertLogitsMatch(Llama2cRunReference.Logits(Shared.Stories260KBin, ids), logits);
    }

    [Fact]
    public void Imported_folder_holds_config_weights_and_both_tokenizer_files()
    {
        using var temp = new TempDir();
        var progress = new List<string>();
        Llama2cImporter.Import(Shared.Stories260KBin, Shared.Tok512Bin, temp["m"], force: false, new SyncProgress(progress), Ct);
        Assert.NotEmpty(progress);
        Assert.Equal(["config.json", "model.safetensors", "tokenizer.bin", "tokenizer.model", "tokenizer_config.json"], Directory.GetFiles(temp["m"]).Select(Path.GetFileName).Order());
        Assert.Equal(File.ReadAllBytes(Shared.Tok512Bin), File.ReadAllBytes(Path.Combine(temp["m"], "tokenizer.bin")));

        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(temp["m"], "config.json")))!.AsObject();
        Assert.Equal("llama", (string?)json["model_type"]);
        Assert.Equal(64, (int)json["hidden_size"]!);
        Assert.Equal(172, (int)json["intermediate_size"]!);
        Assert.Equal(8, (int)json["head_dim"]!);
        Assert.Equal(4, (int)json["num_key_value_heads"]!);
        Assert.Equal(512, (int)json["max_position_embeddings"]!);
        Assert.Equal(1e-5, (double)json["rms_norm_eps"]!);
        Assert.True((bool)json["tie_word_embeddings"]!);
        Assert.Equal("float32", (string?)json["torch_dtype"]);
        Assert.Equal(2, (int)json["eos_token_id"]!);

        // the SentencePiece copy encodes like the llama2.c original
        var sentencePiece = SentencePieceTokenizer.Load(Path.Combine(temp["m"], "tokenizer.model"));
        Assert.Equal([1, 403, 407, 261, 378], sentencePiece.Encode("Once upon a time", addBos: true));

        using var checkpoint = Checkpoint.Open(temp["m"]);
        Assert.Equal("pt", checkpoint.Metadata["format"]);
        Assert.Equal(5 * 9 + 2, checkpoint.Names.Count);
        // embeddings and norms are copied as they are: token 403's row starts at byte 28 + 403·64·4
        var raw = File.ReadAllBytes(Shared.Stories260KBin);
        using var embedding = checkpoint.Read("model.embed_tokens.weight");
        Assert.Equal(BinaryPrimitives.ReadSingleLittleEndian(raw.AsSpan(28 + 403 * 64 * 4)), embedding[403, 0].item<float>());
    }

    [Fact]
    public void A_separate_classifier_becomes_lm_head()
    {
        using var temp = new TempDir();
        // stories260K with vocab_size negated and a classifier appended: what llama2.c exports for untied models
        var bytes = File.ReadAllBytes(Shared.Stories260KBin);
        BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(20), -512);
        var random = new Random(5);
        var classifier = Enumerable.Range(0, 512 * 64).Select(_ => (float)(random.NextDouble() - 0.5)).ToArray();
        var untied = new byte[bytes.Length + classifier.Length * 4];
        bytes.CopyTo(untied, 0);
        Buffer.BlockCopy(classifier, 0, untied, bytes.Length, classifier.Length * 4);
        File.WriteAllBytes(temp["untied.bin"], untied);

        Llama2cImporter.Import(temp["untied.bin"], Shared.Tok512Bin, temp["m"], force: false, cancellationToken: Ct);
        Assert.False(LlamaConfig.Load(Path.Combine(temp["m"], "config.json")).TieWordEmbeddings);
        using var model = LlamaForCausalLM.FromPretrained(temp["m"]);
        Assert.NotNull(model.lm_head);
        Assert.Equal(classifier[64 * 7 + 3], model.lm_head!.weight[7, 3].item<float>());
        int[] ids = [1, 403, 407, 261, 378];
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        AssertLogitsMatch(Llama2cRunReference.Logits(temp["untied.bin"], ids), model.forward(tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Length])));
    }

    static string WithBytes(TempDir temp, string name, Func<byte[], byte[]> change)
    {
        var path = temp[name];
        File.WriteAllBytes(path, change(File.ReadAllBytes(Shared.Stories260KBin)));
        return path;
    }

    static byte[] WithHeaderField(byte[] bytes, int field, int value)
    {
        var copy = bytes.ToArray();
        BinaryPrimitives.WriteInt32LittleEndian(copy.AsSpan(4 * field), value);
        return copy;
    }

    public static TheoryData<string, string> BadCheckpoints => new()
    {
        { "truncated", "truncated" },
        { "one-float-too-many", "longer than the model" },
        { "header-only-part", "shorter than its 28-byte header" },
        { "heads-do-not-divide-dim", "dim is not a multiple of n_heads" },
        { "kv-heads-do-not-divide-heads", "n_heads is not a multiple of n_kv_heads" },
        { "zero-layers", "every field must be positive" },
        { "text-file", "not a" },
        { "versioned-export", "ak42" },
        { "wrong-seq-len", "implies" },
    };

    [Theory]
    [MemberData(nameof(BadCheckpoints))]
    public void Bad_checkpoints_are_refused_with_the_file_named(string kind, string expected)
    {
        using var temp = new TempDir();
        var bin = WithBytes(temp, kind + ".bin", b => kind switch
        {
            "truncated" => b[..1_000_000],
            "one-float-too-many" => [.. b, 0, 0, 128, 63],
            "header-only-part" => b[..20],
            "heads-do-not-divide-dim" => WithHeaderField(b, 3, 7),
            "kv-heads-do-not-divide-heads" => WithHeaderField(b, 4, 3),
            "zero-layers" => WithHeaderField(b, 2, 0),
            "text-file" => System.Text.Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat("Once upon a time, there was a checkpoint. ", 100))),
            "versioned-export" => WithHeaderField(b, 0, 0x616b3432),
            "wrong-seq-len" => WithHeaderField(b, 6, 256),
            _ => throw new ArgumentException(kind),
        });
        var e = Assert.Throws<InvalidInputException>(() => Llama2cImporter.Import(bin, Shared.Tok512Bin, temp["out"], force: false, cancellationToken: Ct));
        Assert.Contains(bin, e.Message);
        Assert.Contains(expected, e.Message);
        Assert.False(Directory.Exists(temp["out"]));
    }

    [Fact]
    public void A_missing_checkpoint_or_tokenizer_is_a_clear_error()
    {
        using var temp = new TempDir();
        var e = Assert.Throws<InvalidInputException>(() => Llama2cImporter.Import(temp["nope.bin"], Shared.Tok512Bin, temp["out"], false, cancellationToken: Ct));
        Assert.Contains(temp["nope.bin"], e.Message);
        e = Assert.Throws<InvalidInputException>(() => Llama2cImporter.Import(Shared.Stories260KBin, temp["tok.bin"], temp["out"], false, cancellationToken: Ct));
        Assert.Contains(temp["tok.bin"], e.Message);
        Assert.Contains("not found", e.Message);
        Assert.False(Directory.Exists(temp["out"]));
    }

    [Fact]
    public void A_tokenizer_of_another_vocabulary_size_is_refused()
    {
        using var temp = new TempDir();
        var bytes = File.ReadAllBytes(Shared.Tok512Bin);
        File.WriteAllBytes(temp["tok.bin"], bytes[..^20]);   // loses the last token(s)
        var e = Assert.Throws<InvalidInputException>(() => Llama2cImporter.Import(Shared.Stories260KBin, temp["tok.bin"], temp["out"], false, cancellationToken: Ct));
        Assert.Contains(temp["tok.bin"], e.Message);
        Assert.False(Directory.Exists(temp["out"]));
    }

    [Fact]
    public void An_existing_output_is_kept_without_force_and_replaced_with_it()
    {
        using var temp = new TempDir();
        Directory.CreateDirectory(temp["out"]);
        File.WriteAllText(Path.Combine(temp["out"], "keep.txt"), "mine");
        var e = Assert.Throws<InvalidInputException>(() => Llama2cImporter.Import(Shared.Stories260KBin, Shared.Tok512Bin, temp["out"], false, cancellationToken: Ct));
        Assert.Contains("--force", e.Message);
        Assert.Equal("mine", File.ReadAllText(Path.Combine(temp["out"], "keep.txt")));

        // --force replaces only a model folder: this one holds the user's file and nothing else, so it stays
        var notModel = Assert.Throws<InvalidInputException>(() => Llama2cImporter.Import(Shared.Stories260KBin, Shared.Tok512Bin, temp["out"], force: true, cancellationToken: Ct));
        Assert.Contains("not a model folder", notModel.Message);
        Assert.Equal("mine", File.ReadAllText(Path.Combine(temp["out"], "keep.txt")));

        // an earlier import is a model folder, and --force replaces it whole
        File.WriteAllText(Path.Combine(temp["out"], "config.json"), "{}");
        File.WriteAllText(Path.Combine(temp["out"], "model.safetensors"), "old weights");
        Llama2cImporter.Import(Shared.Stories260KBin, Shared.Tok512Bin, temp["out"], force: true, cancellationToken: Ct);
        Assert.False(File.Exists(Path.Combine(temp["out"], "keep.txt")));
        Assert.True(File.Exists(Path.Combine(temp["out"], "model.safetensors")));
        Assert.Single(Directory.GetFileSystemEntries(temp.Path));   // no temporary siblings left behind
    }

    [Fact]
    public void A_cancelled_import_leaves_nothing_behind()
    {
        using var temp = new TempDir();
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        Assert.ThrowsAny<OperationCanceledException>(() => Llama2cImporter.Import(Shared.Stories260KBin, Shared.Tok512Bin, temp["out"], false, cancellationToken: cts.Token));
        Assert.Empty(Directory.GetFileSystemEntries(temp.Path));
    }

    /// <summary>Progress&lt;T&gt; posts to the thread pool; this records synchronously.</summary>
    sealed class SyncProgress(List<string> into) : IProgress<string>
    {
        public void Report(string value) => into.Add(value);
    }
}
