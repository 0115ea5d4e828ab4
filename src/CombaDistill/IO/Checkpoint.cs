using System.Text.Json;
using static TorchSharp.torch;

namespace CombaDistill.IO;

/// <summary>
/// The weights of a model, in Hugging Face's layouts: one .safetensors file, a folder holding
/// model.safetensors, or a folder holding model.safetensors.index.json whose weight_map names the
/// shard of every tensor; or the same with PyTorch's pickled files (pytorch_model.bin,
/// pytorch_model.bin.index.json), read through <see cref="PyTorchFile"/>, where a folder has no
/// safetensors weights. Only headers are read on open; tensors are read on demand.
/// </summary>
public sealed class Checkpoint : IDisposable
{
    public const string SingleFileName = "model.safetensors";
    public const string IndexFileName = "model.safetensors.index.json";
    public const string PyTorchFileName = "pytorch_model.bin";
    public const string PyTorchIndexFileName = "pytorch_model.bin.index.json";

    readonly IReadOnlyList<ITensorFile> files;
    readonly Dictionary<string, ITensorFile> fileOf;

    /// <summary>What was opened: the file, or the index for a sharded folder.</summary>
    public string Path { get; }
    public IReadOnlyCollection<string> Names => fileOf.Keys;
    public IReadOnlyList<string> Files => files.Select(f => f.Path).ToList();
    /// <summary>Bytes of tensor data over all names (headers excluded).</summary>
    public long TotalBytes => fileOf.Sum(e => e.Value.Tensors[e.Key].ByteSize);
    /// <summary>The __metadata__ of the first file.</summary>
    public IReadOnlyDictionary<string, string> Metadata => files.Count > 0 ? files[0].Metadata : new Dictionary<string, string>();

    Checkpoint(string path, IReadOnlyList<ITensorFile> files, Dictionary<string, ITensorFile> fileOf) =>
        (Path, this.files, this.fileOf) = (path, files, fileOf);

    public static Checkpoint Open(string pathOrFolder)
    {
        if (File.Exists(pathOrFolder))
            return System.IO.Path.GetFileName(pathOrFolder) is IndexFileName or PyTorchIndexFileName ? Sharded(pathOrFolder) : Single(pathOrFolder);
        if (!Directory.Exists(pathOrFolder)) throw new InvalidInputException(pathOrFolder, "no such file or folder");
        // safetensors first, as transformers prefers them when a folder has both.
        foreach (var name in new[] { IndexFileName, SingleFileName, PyTorchIndexFileName, PyTorchFileName })
        {
            var path = System.IO.Path.Combine(pathOrFolder, name);
            if (File.Exists(path)) return name.EndsWith(".index.json", StringComparison.Ordinal) ? Sharded(path) : Single(path);
        }
        throw new InvalidInputException(pathOrFolder, $"folder has none of {SingleFileName}, {IndexFileName}, {PyTorchFileName}, {PyTorchIndexFileName}");
    }

    public bool Contains(string name) => fileOf.ContainsKey(name);

    public TensorInfo Info(string name) =>
        fileOf.TryGetValue(name, out var file) ? file.Tensors[name] : throw new InvalidInputException(Path, $"no tensor named '{Bounded.Text(name, 100)}'");

    /// <summary>The file that holds <paramref name="name"/>.</summary>
    public string FileOf(string name) => fileOf.TryGetValue(name, out var file) ? file.Path : throw new InvalidInputException(Path, $"no tensor named '{Bounded.Text(name, 100)}'");

    public Tensor Read(string name, ScalarType? dtype = null, Device? device = null) =>
        fileOf.TryGetValue(name, out var file) ? file.Read(name, dtype, device) : throw new InvalidInputException(Path, $"no tensor named '{Bounded.Text(name, 100)}'");

    public void Dispose()
    {
        foreach (var f in files) f.Dispose();
    }

    /// <summary>A pickled PyTorch file (.bin, .pt, .pth) or else a .safetensors file.</summary>
    static ITensorFile OpenFile(string path) =>
        path.EndsWith(".bin", StringComparison.Ordinal) || path.EndsWith(".pt", StringComparison.Ordinal) || path.EndsWith(".pth", StringComparison.Ordinal)
            ? PyTorchFile.Open(path) : SafeTensorsFile.Open(path);

    static Checkpoint Single(string path)
    {
        var file = OpenFile(path);
        return new Checkpoint(path, [file], file.Tensors.Keys.ToDictionary(n => n, _ => file, StringComparer.Ordinal));
    }

    static Checkpoint Sharded(string indexPath)
    {
        var weightMap = ReadWeightMap(indexPath);
        var folder = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(indexPath))!;
        var opened = new Dictionary<string, ITensorFile>(StringComparer.Ordinal);
        try
        {
            foreach (var shard in weightMap.Values.Distinct().Order(StringComparer.Ordinal))
            {
                var shardPath = System.IO.Path.Combine(folder, shard);
                if (!File.Exists(shardPath))
                    throw new InvalidInputException(indexPath, $"shard '{Bounded.Text(shard, 100)}' named in weight_map is missing ({Bounded.Text(shardPath, 200)})");
                opened[shard] = OpenFile(shardPath);
            }
            var fileOf = new Dictionary<string, ITensorFile>(StringComparer.Ordinal);
            foreach (var (name, shard) in weightMap)
            {
                var file = opened[shard];
                if (!file.Contains(name))
                    throw new InvalidInputException(indexPath, $"weight_map puts tensor '{Bounded.Text(name, 100)}' in shard '{Bounded.Text(shard, 100)}', which does not hold it");
                fileOf[name] = file;
            }
            return new Checkpoint(indexPath, opened.Values.ToList(), fileOf);
        }
        catch
        {
            foreach (var f in opened.Values) f.Dispose();
            throw;
        }
    }

    static Dictionary<string, string> ReadWeightMap(string indexPath)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(InputFile.ReadAllBytes(indexPath, "safetensors index", maxBytes: 256L << 20));
        }
        catch (JsonException e)
        {
            throw new InvalidInputException(indexPath, $"not valid JSON ({e.Message})", e);
        }
        using (doc)
        try
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object
                || !doc.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new InvalidInputException(indexPath, "has no weight_map object");
            var result = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var entry in map.EnumerateObject())
            {
                if (entry.Value.ValueKind != JsonValueKind.String)
                    throw new InvalidInputException(indexPath, $"weight_map entry '{Bounded.Text(entry.Name, 100)}' is not a file name");
                var shard = entry.Value.GetString()!;
                // Shards live beside the index; a path here could point anywhere.
                if (shard.Length == 0 || shard != System.IO.Path.GetFileName(shard) || shard is "." or "..")
                    throw new InvalidInputException(indexPath, $"weight_map entry '{Bounded.Text(entry.Name, 100)}' names '{Bounded.Text(shard, 100)}', which is not a file name in the same folder");
                if (!result.TryAdd(entry.Name, shard))
                    throw new InvalidInputException(indexPath, $"weight_map names tensor '{Bounded.Text(entry.Name, 100)}' twice");
            }
            return result;
        }
        catch (InvalidOperationException e)
        {
            throw new InvalidInputException(indexPath, "holds a string that is not valid Unicode (a lone surrogate escape)", e);
        }
    }
}
