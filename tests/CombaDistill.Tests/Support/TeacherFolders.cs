using CombaDistill.Conversion;
using CombaDistill.IO;
using CombaDistill.Modeling.Llama;
using CombaDistill.Tests.Modeling;
using CombaDistill.Tests.Support;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Support;

/// <summary>Hugging Face-style teacher folders written by the tests: config.json plus weights, single-file or sharded.</summary>
static class TeacherFolders
{
    /// <summary>Writes <paramref name="weights"/> (converted to <paramref name="dtype"/>) and config.json into a new folder.</summary>
    public static string Write(string folder, LlamaConfig config, Dictionary<string, Tensor> weights, ScalarType dtype, long maxShardBytes = long.MaxValue)
    {
        Directory.CreateDirectory(folder);
        var stored = config with { TorchDtype = CombaConverter.DTypeName(dtype) };
        File.WriteAllText(Path.Combine(folder, "config.json"), stored.ToJson().ToJsonString());
        CheckpointWriter.Write(folder, weights.Select(e => (e.Key, e.Value.to(dtype))), maxShardBytes);
        return folder;
    }

    /// <summary>A random teacher of <paramref name="config"/> written to <paramref name="folder"/>.</summary>
    public static string WriteRandom(string folder, LlamaConfig config, ulong seed, ScalarType dtype = ScalarType.Float32, long maxShardBytes = long.MaxValue)
    {
        using var scope = NewDisposeScope();
        return Write(folder, config, TinyModels.RandomWeights(config, seed), dtype, maxShardBytes);
    }

    /// <summary>stories260K imported with the llama2.c importer: config.json, model.safetensors, tokenizer.bin, tokenizer.model.</summary>
    public static string ImportStories260K(string folder)
    {
        Llama2cImporter.Import(Shared.Stories260KBin, Shared.Tok512Bin, folder, force: false);
        return folder;
    }

    /// <summary>Every tensor's raw bytes, dtype and shape, for bitwise comparisons.</summary>
    public static (string DType, long[] Shape, byte[] Bytes) Raw(Checkpoint checkpoint, string name)
    {
        using var t = checkpoint.Read(name);
        return (checkpoint.Info(name).DType, t.shape, t.bytes.ToArray());
    }
}

/// <summary>An <see cref="IProgress{T}"/> that runs its handler at once, on the reporting thread (unlike Progress&lt;T&gt;).</summary>
sealed class SyncProgress<T>(Action<T> handler) : IProgress<T>
{
    public void Report(T value) => handler(value);
}
