using CombaDistill.IO;
using CombaDistill.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Tests.IO;

public class StateDictLoaderTests
{
    static nn.Module<Tensor, Tensor> Mlp(long seed)
    {
        manual_seed(seed);
        return nn.Sequential(("fc1", nn.Linear(4, 3)), ("act", nn.ReLU()), ("fc2", nn.Linear(3, 2)));
    }

    static string Save(TempDir dir, Dictionary<string, Tensor> entries, string name = "model.safetensors")
    {
        SafeTensorsWriter.Write(dir[name], entries);
        return dir[name];
    }

    [Fact]
    public void Loads_every_parameter_so_the_copy_computes_what_the_original_does()
    {
        using var dir = new TempDir();
        using var original = Mlp(1);
        Save(dir, original.state_dict());
        using var copy = Mlp(2);
        using var ckpt = Checkpoint.Open(dir.Path);

        var report = StateDictLoader.Load(copy, ckpt);

        Assert.Equal(4, report.Tensors);
        Assert.Equal((12 + 3 + 6 + 2) * 4, report.Bytes);
        Assert.Empty(report.NotLoaded);
        foreach (var (key, value) in original.state_dict())
            Assert.Equal(RawSafeTensors.BytesOf(value), RawSafeTensors.BytesOf(copy.state_dict()[key]));
        using var x = randn(5, 4, generator: manual_seed(3));
        using var expected = original.call(x);
        using var actual = copy.call(x);
        Assert.Equal(expected.data<float>().ToArray(), actual.data<float>().ToArray());
    }

    [Fact]
    public void Converts_stored_dtype_and_the_module_when_asked()
    {
        using var dir = new TempDir();
        using var original = Mlp(1);
        Save(dir, original.state_dict().ToDictionary(e => e.Key, e => e.Value.to(ScalarType.BFloat16)));
        using var copy = Mlp(2);
        using var ckpt = Checkpoint.Open(dir.Path);

        StateDictLoader.Load(copy, ckpt, dtype: ScalarType.Float64);

        var weight = copy.state_dict()["fc1.weight"];
        Assert.Equal(ScalarType.Float64, weight.dtype);
        using var expected = original.state_dict()["fc1.weight"].to(ScalarType.BFloat16).to(ScalarType.Float64);
        Assert.Equal(expected.data<double>().ToArray(), weight.data<double>().ToArray());
    }

    [Fact]
    public void A_missing_tensor_is_named_and_nothing_is_copied()
    {
        using var dir = new TempDir();
        using var original = Mlp(1);
        var entries = original.state_dict();
        entries.Remove("fc2.bias");
        var path = Save(dir, entries);
        using var copy = Mlp(2);
        using var before = copy.state_dict()["fc1.weight"].clone();
        using var ckpt = Checkpoint.Open(dir.Path);

        var ex = Assert.Throws<InvalidInputException>(() => StateDictLoader.Load(copy, ckpt));
        Assert.Contains(path, ex.Message);
        Assert.Contains("missing tensor fc2.bias", ex.Message);
        Assert.Equal(before.data<float>().ToArray(), copy.state_dict()["fc1.weight"].data<float>().ToArray());
    }

    [Fact]
    public void An_unexpected_tensor_is_named_unless_ignored()
    {
        using var dir = new TempDir();
        using var original = Mlp(1);
        using var extra = ones(3);
        var entries = original.state_dict();
        entries["rotary_emb.inv_freq"] = extra;
        var path = Save(dir, entries);
        using var copy = Mlp(2);
        using var ckpt = Checkpoint.Open(dir.Path);

        var ex = Assert.Throws<InvalidInputException>(() => StateDictLoader.Load(copy, ckpt));
        Assert.Contains(path, ex.Message);
        Assert.Contains("unexpected tensor rotary_emb.inv_freq", ex.Message);
        Assert.Equal(4, StateDictLoader.Load(copy, ckpt, ignoreUnexpected: ["rotary_emb.inv_freq"]).Tensors);
    }

    [Fact]
    public void A_shape_that_torch_would_broadcast_is_still_a_mismatch()
    {
        using var dir = new TempDir();
        using var original = Mlp(1);
        using var oneBias = ones(1);
        var entries = original.state_dict();
        entries["fc1.bias"] = oneBias;  // [1] broadcasts to [3] under copy_, silently
        var path = Save(dir, entries);
        using var copy = Mlp(2);
        using var ckpt = Checkpoint.Open(dir.Path);

        var ex = Assert.Throws<InvalidInputException>(() => StateDictLoader.Load(copy, ckpt));
        Assert.Contains(path, ex.Message);
        Assert.Contains("tensor 'fc1.bias' has shape [1] but fc1.bias needs [3]", ex.Message);
    }

    [Fact]
    public void A_dtype_that_does_not_convert_is_refused()
    {
        using var dir = new TempDir();
        using var original = Mlp(1);
        using var ints = ones(new long[] { 2 }, dtype: ScalarType.Int64);
        var entries = original.state_dict();
        entries["fc2.bias"] = ints;
        Save(dir, entries);
        using var copy = Mlp(2);
        using var ckpt = Checkpoint.Open(dir.Path);

        var ex = Assert.Throws<InvalidInputException>(() => StateDictLoader.Load(copy, ckpt));
        Assert.Contains("tensor 'fc2.bias' is I64, which does not convert to fc2.bias's Float32", ex.Message);
    }

    /// <summary>An lm_head tied to the embedding, as with tie_word_embeddings: two keys, one tensor.</summary>
    sealed class TiedLm : nn.Module<Tensor, Tensor>
    {
        readonly TorchSharp.Modules.Embedding embed_tokens;
        readonly TorchSharp.Modules.Linear lm_head;

        public TiedLm(long seed) : base(nameof(TiedLm))
        {
            manual_seed(seed);
            embed_tokens = nn.Embedding(5, 3);
            lm_head = nn.Linear(3, 5, hasBias: false);
            lm_head.weight = embed_tokens.weight!;
            RegisterComponents();
        }

        public override Tensor forward(Tensor ids) => lm_head.call(embed_tokens.call(ids));
    }

    [Fact]
    public void Tied_weights_load_through_rename_or_through_ignoreMissing()
    {
        using var dir = new TempDir();
        using var original = new TiedLm(1);
        var stored = original.state_dict();
        Assert.Equal(["embed_tokens.weight", "lm_head.weight"], stored.Keys.Order().ToArray());
        stored.Remove("lm_head.weight");  // what a tie_word_embeddings checkpoint holds
        Save(dir, stored);
        using var ckpt = Checkpoint.Open(dir.Path);
        var expected = original.state_dict()["embed_tokens.weight"].data<float>().ToArray();

        using var plain = new TiedLm(2);
        var ex = Assert.Throws<InvalidInputException>(() => StateDictLoader.Load(plain, ckpt));
        Assert.Contains("missing tensor lm_head.weight", ex.Message);

        using var renamed = new TiedLm(2);
        var viaRename = StateDictLoader.Load(renamed, ckpt, rename: key => key == "lm_head.weight" ? "embed_tokens.weight" : key);
        Assert.Equal(2, viaRename.Tensors);
        Assert.Equal(expected, renamed.state_dict()["lm_head.weight"].data<float>().ToArray());

        using var ignored = new TiedLm(2);
        var viaIgnore = StateDictLoader.Load(ignored, ckpt, ignoreMissing: ["lm_head.weight"]);
        Assert.Equal(1, viaIgnore.Tensors);
        Assert.Equal(["lm_head.weight"], viaIgnore.NotLoaded);
        // Still tied, so the head holds the embedding that was loaded.
        Assert.Equal(expected, ignored.state_dict()["lm_head.weight"].data<float>().ToArray());
    }

    [Fact]
    public void Rename_returning_null_leaves_an_entry_as_it_was()
    {
        using var dir = new TempDir();
        using var original = Mlp(1);
        var entries = original.state_dict();
        entries.Remove("fc2.bias");
        Save(dir, entries);
        using var ckpt = Checkpoint.Open(dir.Path);
        using var copy = Mlp(2);
        using var before = copy.state_dict()["fc2.bias"].clone();

        var report = StateDictLoader.Load(copy, ckpt, rename: key => key == "fc2.bias" ? null : key);

        Assert.Equal(3, report.Tensors);
        Assert.Equal(["fc2.bias"], report.NotLoaded);
        Assert.Equal(before.data<float>().ToArray(), copy.state_dict()["fc2.bias"].data<float>().ToArray());
        Assert.Equal(original.state_dict()["fc1.bias"].data<float>().ToArray(), copy.state_dict()["fc1.bias"].data<float>().ToArray());
    }

    [Fact]
    public void Reads_from_a_sharded_checkpoint()
    {
        using var dir = new TempDir();
        using var original = Mlp(1);
        CheckpointWriter.Write(dir.Path, original.state_dict().Select(e => (e.Key, e.Value)), maxShardBytes: 40);
        using var ckpt = Checkpoint.Open(dir.Path);
        Assert.True(ckpt.Files.Count > 1);
        using var copy = Mlp(2);
        StateDictLoader.Load(copy, ckpt);
        foreach (var (key, value) in original.state_dict())
            Assert.Equal(RawSafeTensors.BytesOf(value), RawSafeTensors.BytesOf(copy.state_dict()[key]));
    }
}
