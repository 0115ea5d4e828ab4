using System.Text.Encodings.Web;
using System.Text.Json;
using static TorchSharp.torch;

namespace CombaDistill.IO;

/// <summary>
/// Writes a model's weights in Hugging Face's layout: a single model.safetensors when everything
/// fits in one shard, otherwise model-0000N-of-0000M.safetensors plus model.safetensors.index.json
/// (metadata.total_size and weight_map). Tensors go to shards in plan order; a shard is closed when
/// the next tensor would take it past maxShardBytes (a tensor larger than that gets a shard alone).
/// </summary>
/// <remarks>
/// The index is written last, so a reader never sees it pointing at shards not yet written. Layout
/// files this write did not produce (a stale single file, index or shards of another count) are
/// deleted afterwards, so the folder always opens as what was just written. Write into an
/// <see cref="AtomicDirectory"/> for a folder that appears all at once.
/// </remarks>
public static class CheckpointWriter
{
    public static IReadOnlyList<string> Write(string folder, IEnumerable<(string Name, Tensor Tensor)> tensors, long maxShardBytes,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        var byName = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        var plan = new List<PlannedTensor>();
        foreach (var (name, tensor) in tensors)
        {
            if (!byName.TryAdd(name, tensor)) throw new ArgumentException($"tensor '{name}' is given twice", nameof(tensors));
            plan.Add(PlannedTensor.Of(name, tensor));
        }
        return WriteStreaming(folder, plan, name => byName[name], maxShardBytes, metadata);
    }

    /// <summary>Like <see cref="SafeTensorsWriter.WriteStreaming"/>, over shards. Returns the files written.</summary>
    public static IReadOnlyList<string> WriteStreaming(string folder, IReadOnlyList<PlannedTensor> plan, Func<string, Tensor> produce, long maxShardBytes,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxShardBytes);
        Directory.CreateDirectory(folder);
        var shards = Split(plan, maxShardBytes);
        var written = new List<string>();
        if (shards.Count <= 1)
        {
            var path = System.IO.Path.Combine(folder, Checkpoint.SingleFileName);
            SafeTensorsWriter.WriteStreaming(path, shards.Count == 0 ? [] : shards[0], produce, metadata);
            written.Add(path);
        }
        else
        {
            var weightMap = new List<(string Tensor, string Shard)>();
            for (var i = 0; i < shards.Count; i++)
            {
                var name = ShardName(i + 1, shards.Count);
                var path = System.IO.Path.Combine(folder, name);
                SafeTensorsWriter.WriteStreaming(path, shards[i], produce, metadata);
                written.Add(path);
                weightMap.AddRange(shards[i].Select(t => (t.Name, name)));
            }
            var index = System.IO.Path.Combine(folder, Checkpoint.IndexFileName);
            AtomicFile.WriteAllBytes(index, IndexJson(plan.Sum(t => t.ByteSize), weightMap));
            written.Add(index);
        }
        DeleteStaleLayoutFiles(folder, written);
        return written;
    }

    public static string ShardName(int number, int count) => $"model-{number:D5}-of-{count:D5}.safetensors";

    static List<List<PlannedTensor>> Split(IReadOnlyList<PlannedTensor> plan, long maxShardBytes)
    {
        var shards = new List<List<PlannedTensor>>();
        long size = 0;
        foreach (var t in plan)
        {
            if (shards.Count == 0 || (size > 0 && size + t.ByteSize > maxShardBytes))
            {
                shards.Add([]);
                size = 0;
            }
            shards[^1].Add(t);
            size += t.ByteSize;
        }
        return shards;
    }

    static byte[] IndexJson(long totalSize, List<(string Tensor, string Shard)> weightMap)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            json.WriteStartObject("metadata");
            json.WriteNumber("total_size", totalSize);
            json.WriteEndObject();
            json.WriteStartObject("weight_map");
            foreach (var (tensor, shard) in weightMap) json.WriteString(tensor, shard);
            json.WriteEndObject();
            json.WriteEndObject();
        }
        buffer.WriteByte((byte)'\n');
        return buffer.ToArray();
    }

    static void DeleteStaleLayoutFiles(string folder, List<string> written)
    {
        var keep = written.Select(System.IO.Path.GetFileName).ToHashSet(StringComparer.Ordinal);
        var layout = Directory.EnumerateFiles(folder, "model-?????-of-?????.safetensors")
            .Append(System.IO.Path.Combine(folder, Checkpoint.SingleFileName))
            .Append(System.IO.Path.Combine(folder, Checkpoint.IndexFileName));
        foreach (var path in layout)
            if (!keep.Contains(System.IO.Path.GetFileName(path)) && File.Exists(path)) File.Delete(path);
    }
}
