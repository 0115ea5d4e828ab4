using System.Text.Json;
using CombaDistill.IO;
using CombaDistill.Tests.Support;
using static TorchSharp.torch;

namespace CombaDistill.Tests.IO;

public class CheckpointTests
{
    // Five 4x4 F32 tensors of 64 bytes each.
    static List<(string Name, Tensor Tensor)> FiveTensors() =>
        Enumerable.Range(0, 5).Select(i => ($"model.layers.{i}.weight", randn(new long[] { 4, 4 }, generator: manual_seed(10 + i)))).ToList();

    [Fact]
    public void Sharded_write_splits_at_the_limit_and_reads_back_every_tensor()
    {
        using var dir = new TempDir();
        var tensors = FiveTensors();
        var written = CheckpointWriter.Write(dir.Path, tensors, maxShardBytes: 150);

        string[] shards = ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"];
        Assert.Equal([.. shards, "model.safetensors.index.json"], written.Select(f => Path.GetFileName(f)!).ToArray());
        Assert.False(File.Exists(dir["model.safetensors"]));

        using (var doc = JsonDocument.Parse(File.ReadAllText(dir["model.safetensors.index.json"])))
        {
            Assert.Equal(320, doc.RootElement.GetProperty("metadata").GetProperty("total_size").GetInt64());
            var map = doc.RootElement.GetProperty("weight_map").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString());
            Assert.Equal(shards[0], map["model.layers.0.weight"]);
            Assert.Equal(shards[0], map["model.layers.1.weight"]);
            Assert.Equal(shards[1], map["model.layers.2.weight"]);
            Assert.Equal(shards[1], map["model.layers.3.weight"]);
            Assert.Equal(shards[2], map["model.layers.4.weight"]);
        }

        using var ckpt = Checkpoint.Open(dir.Path);
        Assert.Equal(dir["model.safetensors.index.json"], ckpt.Path);
        Assert.Equal(3, ckpt.Files.Count);
        Assert.Equal(320, ckpt.TotalBytes);
        Assert.Equal(tensors.Select(t => t.Name).Order(), ckpt.Names.Order());
        Assert.Equal(dir[shards[1]], ckpt.FileOf("model.layers.3.weight"));
        foreach (var (name, original) in tensors)
        {
            using var read = ckpt.Read(name);
            Assert.Equal(RawSafeTensors.BytesOf(original), RawSafeTensors.BytesOf(read));
            Assert.Equal(new long[] { 4, 4 }, ckpt.Info(name).Shape);
            original.Dispose();
        }
    }

    [Fact]
    public void A_tensor_larger_than_the_limit_gets_a_shard_of_its_own()
    {
        using var dir = new TempDir();
        using var small = ones(2);
        using var large = ones(100);
        CheckpointWriter.Write(dir.Path, [("a", small), ("big", large), ("c", small)], maxShardBytes: 64);
        using var ckpt = Checkpoint.Open(dir.Path);
        Assert.Equal(3, ckpt.Files.Count);
        Assert.Equal(dir["model-00002-of-00003.safetensors"], ckpt.FileOf("big"));
    }

    [Fact]
    public void Everything_in_one_shard_is_a_single_model_safetensors_and_stale_shards_are_removed()
    {
        using var dir = new TempDir();
        var tensors = FiveTensors();
        CheckpointWriter.Write(dir.Path, tensors, maxShardBytes: 150);
        File.WriteAllText(dir["config.json"], "{}");

        var written = CheckpointWriter.Write(dir.Path, tensors, maxShardBytes: 1 << 20);
        Assert.Equal([dir["model.safetensors"]], written);
        Assert.Equal(["config.json", "model.safetensors"], Directory.GetFiles(dir.Path).Select(f => Path.GetFileName(f)!).Order().ToArray());

        using var ckpt = Checkpoint.Open(dir.Path);
        Assert.Equal([dir["model.safetensors"]], ckpt.Files);
        using var read = ckpt.Read("model.layers.2.weight");
        Assert.Equal(RawSafeTensors.BytesOf(tensors[2].Tensor), RawSafeTensors.BytesOf(read));
        foreach (var t in tensors) t.Tensor.Dispose();
    }

    [Fact]
    public void Streaming_sharded_write_produces_each_tensor_once_in_plan_order()
    {
        using var dir = new TempDir();
        var plan = Enumerable.Range(0, 6).Select(i => new PlannedTensor($"t{i}", ScalarType.BFloat16, [8])).ToList();
        var produced = new List<string>();
        CheckpointWriter.WriteStreaming(dir.Path, plan, name =>
        {
            produced.Add(name);
            return full(8, float.Parse(name[1..]));
        }, maxShardBytes: 32);
        Assert.Equal(plan.Select(p => p.Name), produced);
        using var ckpt = Checkpoint.Open(dir.Path);
        Assert.Equal(3, ckpt.Files.Count);
        Assert.Equal(96, ckpt.TotalBytes);
        using var t5 = ckpt.Read("t5", ScalarType.Float32);
        Assert.All(t5.data<float>().ToArray(), v => Assert.Equal(5f, v));
    }

    [Fact]
    public void Opens_a_single_file_or_a_folder_holding_model_safetensors()
    {
        using var dir = new TempDir();
        using var x = arange(3, dtype: ScalarType.Float32);
        SafeTensorsWriter.Write(dir["model.safetensors"], [new("x", x)]);
        SafeTensorsWriter.Write(dir["other.safetensors"], [new("y", x)]);
        using (var folder = Checkpoint.Open(dir.Path)) Assert.Equal(["x"], folder.Names);
        using (var file = Checkpoint.Open(dir["other.safetensors"]))
        {
            Assert.Equal(["y"], file.Names);
            Assert.Equal(12, file.TotalBytes);
        }
    }

    [Fact]
    public void A_folder_without_weights_is_refused()
    {
        using var dir = new TempDir();
        var ex = Assert.Throws<InvalidInputException>(() => Checkpoint.Open(dir.Path));
        Assert.Contains(dir.Path, ex.Message);
        Assert.Contains("none of model.safetensors, model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json", ex.Message);
        var missing = Assert.Throws<InvalidInputException>(() => Checkpoint.Open(dir["nothing-here"]));
        Assert.Contains("no such file or folder", missing.Message);
    }

    [Fact]
    public void A_missing_shard_is_named_with_the_index()
    {
        using var dir = new TempDir();
        var tensors = FiveTensors();
        CheckpointWriter.Write(dir.Path, tensors, maxShardBytes: 150);
        File.Delete(dir["model-00002-of-00003.safetensors"]);
        var ex = Assert.Throws<InvalidInputException>(() => Checkpoint.Open(dir.Path));
        Assert.Contains("model.safetensors.index.json", ex.Message);
        Assert.Contains("shard 'model-00002-of-00003.safetensors' named in weight_map is missing", ex.Message);
        foreach (var t in tensors) t.Tensor.Dispose();
    }

    [Fact]
    public void A_weight_map_entry_its_shard_does_not_hold_is_refused()
    {
        using var dir = new TempDir();
        using var x = ones(2);
        SafeTensorsWriter.Write(dir["model-00001-of-00001.safetensors"], [new("x", x)]);
        File.WriteAllText(dir["model.safetensors.index.json"],
            """{"metadata":{"total_size":16},"weight_map":{"x":"model-00001-of-00001.safetensors","ghost":"model-00001-of-00001.safetensors"}}""");
        var ex = Assert.Throws<InvalidInputException>(() => Checkpoint.Open(dir.Path));
        Assert.Contains("model.safetensors.index.json", ex.Message);
        Assert.Contains("tensor 'ghost' in shard 'model-00001-of-00001.safetensors', which does not hold it", ex.Message);
    }

    [Theory]
    [InlineData("""{"weight_map":{"x":"../elsewhere.safetensors"}}""", "not a file name in the same folder")]
    [InlineData("""{"metadata":{}}""", "has no weight_map object")]
    [InlineData("""{"weight_map":{"x":3}}""", "weight_map entry 'x' is not a file name")]
    [InlineData("""{"weight_map":""", "not valid JSON")]
    public void A_malformed_index_is_refused(string index, string phrase)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir["model.safetensors.index.json"], index);
        var ex = Assert.Throws<InvalidInputException>(() => Checkpoint.Open(dir.Path));
        Assert.Contains("model.safetensors.index.json", ex.Message);
        Assert.Contains(phrase, ex.Message);
    }
}

public class CheckpointGpuTests
{
    [Fact]
    public void Reads_onto_a_CUDA_device_in_the_requested_dtype()
    {
        Gpu.Require();
        using var dir = new TempDir();
        using var x = randn(new long[] { 3, 7 }, generator: manual_seed(4));
        CheckpointWriter.Write(dir.Path, [("x", x)], maxShardBytes: 1 << 20);
        using var ckpt = Checkpoint.Open(dir.Path);
        using var onGpu = ckpt.Read("x", ScalarType.BFloat16, CUDA);
        Assert.Equal(TorchSharp.DeviceType.CUDA, onGpu.device_type);
        using var back = onGpu.cpu();
        using var expected = x.to(ScalarType.BFloat16);
        Assert.Equal(RawSafeTensors.BytesOf(expected), RawSafeTensors.BytesOf(back));
    }
}
