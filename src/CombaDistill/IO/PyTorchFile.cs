using System.Collections;
using System.IO.Compression;
using System.Reflection;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace CombaDistill.IO;

/// <summary>
/// A read-only <c>pytorch_model.bin</c>: the zip archive <c>torch.save</c> writes (since PyTorch 1.6), a pickle
/// <c>data.pkl</c> describing the state dict and one archive entry per storage. The pickle's opcodes are checked
/// first (<see cref="PickleScan"/>): only tensors in dicts, lists and tuples are accepted, so nothing a pickle could
/// run is ever reached. TorchSharp.PyBridge's unpickler then gives each tensor's storage entry, dtype, offset, shape
/// and strides without reading data; <see cref="Read"/> reads a tensor's storage on demand and takes the tensor's
/// view of it, so tensors that share a storage, start at an offset or are not contiguous come out as PyTorch has them.
/// </summary>
/// <remarks>
/// <see cref="TensorInfo.Begin"/> and <see cref="TensorInfo.End"/> are 0 and the tensor's byte size here: a tensor's
/// bytes are not one range of the file.
/// </remarks>
public sealed class PyTorchFile : ITensorFile
{
    sealed record Entry(int ArchiveIndex, ScalarType Type, long StorageOffset, long[] Shape, long[] Stride);

    readonly FileStream stream;
    readonly ZipArchive archive;
    readonly Dictionary<string, Entry> entries;
    readonly Lock gate = new();

    public string Path { get; }
    public IReadOnlyDictionary<string, TensorInfo> Tensors { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; } = new Dictionary<string, string>();

    PyTorchFile(string path, FileStream stream, ZipArchive archive, Dictionary<string, Entry> entries, Dictionary<string, TensorInfo> tensors)
    {
        Path = path;
        this.stream = stream;
        this.archive = archive;
        this.entries = entries;
        Tensors = tensors;
    }

    public static PyTorchFile Open(string path)
    {
        var stream = InputFile.OpenRead(path, "pytorch_model.bin file");
        try
        {
            Span<byte> magic = stackalloc byte[4];
            if (stream.ReadAtLeast(magic, 4, throwOnEndOfStream: false) < 4 || !magic.SequenceEqual("PK\u0003\u0004"u8))
                throw new InvalidInputException(path,
                    "not a zip archive: PyTorch's format before 1.6 (or not a torch.save file) is not read; save it again with a recent torch, or as safetensors");
            stream.Position = 0;
            ZipArchive archive;
            try { archive = new ZipArchive(stream, ZipArchiveMode.Read, leaveOpen: true); }
            catch (InvalidDataException e) { throw new InvalidInputException(path, $"not a readable zip archive ({e.Message})", e); }
            try
            {
                var pickleEntry = archive.Entries.Where(e => e.FullName.EndsWith("/data.pkl", StringComparison.Ordinal) || e.FullName == "data.pkl").ToList();
                if (pickleEntry.Count != 1)
                    throw new InvalidInputException(path, $"a torch.save archive holds one data.pkl; this one holds {pickleEntry.Count}");
                byte[] pickle;
                using (var s = pickleEntry[0].Open())
                using (var buffer = new MemoryStream())
                {
                    s.CopyTo(buffer);
                    pickle = buffer.ToArray();
                }
                PickleScan.RequireStateDictOnly(pickle, path);
                var (found, tensors) = ReadEntries(path, stream, archive);
                return new PyTorchFile(path, stream, archive, found, tensors);
            }
            catch
            {
                archive.Dispose();
                throw;
            }
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    /// <summary>Unpickles the (already checked) state dict with PyBridge, without reading any tensor data.</summary>
    static (Dictionary<string, Entry>, Dictionary<string, TensorInfo>) ReadEntries(string path, FileStream stream, ZipArchive archive)
    {
        Hashtable table;
        stream.Position = 0;
        try { table = PyTorchUnpickler.UnpickleStateDict(stream, leaveOpen: true, skipTensorRead: true); }
        catch (Exception e) when (e is not InvalidInputException)
        {
            throw new InvalidInputException(path, $"the state dict cannot be read ({e.GetType().Name}: {e.Message})", e);
        }
        var entries = new Dictionary<string, Entry>(StringComparer.Ordinal);
        var tensors = new Dictionary<string, TensorInfo>(StringComparer.Ordinal);
        foreach (DictionaryEntry item in table)
        {
            if (item.Key is not string name)
                throw new InvalidInputException(path, $"the state dict has a key that is not a string ({item.Key})");
            var entry = Describe(path, name, item.Value);
            if (entry.ArchiveIndex < 0 || entry.ArchiveIndex >= archive.Entries.Count)
                throw new InvalidInputException(path, $"tensor '{name}': its storage is not in the archive");
            string dtype;
            try { dtype = SafeTensorsDType.FromScalarType(entry.Type); }
            catch (ArgumentException) { throw new InvalidInputException(path, $"tensor '{name}': dtype {entry.Type} is not supported"); }
            long elements = entry.Shape.Aggregate(1L, (a, b) => a * b);
            long storageElements = archive.Entries[entry.ArchiveIndex].Length / SafeTensorsDType.ItemSize(dtype);
            // The last element the view reaches must lie inside the storage.
            long reach = elements == 0 ? 0 : entry.StorageOffset + entry.Shape.Zip(entry.Stride, (n, s) => (n - 1) * s).Sum() + 1;
            if (entry.StorageOffset < 0 || entry.Stride.Any(s => s < 0) || entry.Shape.Any(n => n < 0) || reach > storageElements)
                throw new InvalidInputException(path, $"tensor '{name}': shape {Text(entry.Shape)} with strides {Text(entry.Stride)} at offset {entry.StorageOffset} runs past its storage of {storageElements} elements");
            entries[name] = entry;
            tensors[name] = new TensorInfo(name, dtype, entry.Shape, 0, elements * SafeTensorsDType.ItemSize(dtype));
        }
        return (entries, tensors);
    }

    /// <summary>
    /// PyBridge hands each tensor back as its internal TensorConstructorArgs (public properties on an internal class),
    /// read here by reflection; its open entry stream is closed, since <see cref="Read"/> opens its own.
    /// </summary>
    static Entry Describe(string path, string name, object? value)
    {
        if (value is null || value.GetType().Name != "TensorConstructorArgs")
            throw new InvalidInputException(path, $"'{name}' is not a tensor ({value?.GetType().Name ?? "None"}); a state dict maps names to tensors");
        object? Get(string property) =>
            value.GetType().GetProperty(property, BindingFlags.Public | BindingFlags.Instance)?.GetValue(value)
            ?? throw new InvalidOperationException($"TorchSharp.PyBridge's TensorConstructorArgs has no {property}; this reader was written for PyBridge 1.4");
        (Get("Data") as Stream)?.Dispose();
        return new Entry((int)Get("ArchiveIndex")!, (ScalarType)Get("DType")!, Convert.ToInt64(Get("StorageOffset")),
            (long[])Get("Shape")!, (long[])Get("Stride")!);
    }

    public bool Contains(string name) => entries.ContainsKey(name);

    /// <summary>Reads one tensor (contiguous, on the CPU in its stored dtype unless <paramref name="dtype"/> and <paramref name="device"/> say otherwise).</summary>
    public Tensor Read(string name, ScalarType? dtype = null, Device? device = null)
    {
        if (!entries.TryGetValue(name, out var entry)) throw new InvalidInputException(Path, $"no tensor named '{name}'");
        var zipEntry = archive.Entries[entry.ArchiveIndex];
        long itemSize = SafeTensorsDType.ItemSize(Tensors[name].DType);
        using var storage = empty(zipEntry.Length / itemSize, dtype: entry.Type);
        lock (gate)
        {
            using var data = zipEntry.Open();
            TensorBytes.ForEachChunk(storage, (span, _) =>
            {
                try { data.ReadExactly(span); }
                catch (EndOfStreamException e) { throw new InvalidInputException(Path, $"tensor '{name}': its storage ends early; truncated?", e); }
            });
        }
        using var view = storage.as_strided(entry.Shape, entry.Stride, entry.StorageOffset);
        var tensor = view.contiguous().clone();
        var wantType = dtype ?? entry.Type;
        var wantDevice = device ?? CPU;
        if (wantType == entry.Type && wantDevice.type == TorchSharp.DeviceType.CPU) return tensor;
        using (tensor) return tensor.to(wantType, wantDevice);
    }

    public void Dispose()
    {
        archive.Dispose();
        stream.Dispose();
    }

    static string Text(long[] values) => $"[{string.Join(", ", values)}]";
}
