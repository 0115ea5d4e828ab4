using System.Text.Encodings.Web;
using System.Text.Json;
using static TorchSharp.torch;

namespace CombaDistill.IO;

/// <summary>A tensor the writer will be handed later: its header entry is known up front.</summary>
public sealed record PlannedTensor(string Name, ScalarType DType, long[] Shape)
{
    public long ByteSize => Shape.Aggregate(1L, (a, b) => a * b) * SafeTensorsDType.ItemSize(SafeTensorsDType.FromScalarType(DType));

    public static PlannedTensor Of(string name, Tensor t) => new(name, t.dtype, t.shape);
}

/// <summary>
/// Writes safetensors files. The header (padded with spaces so the data starts on an 8-byte
/// boundary, which Python's safetensors requires) is fixed by the plan, so tensors can then be
/// produced and written one at a time; the file appears under its name only once complete.
/// </summary>
public static class SafeTensorsWriter
{
    /// <summary>Writes tensors that already exist, in the order given.</summary>
    public static void Write(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var byName = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        var plan = new List<PlannedTensor>();
        foreach (var (name, tensor) in tensors)
        {
            if (!byName.TryAdd(name, tensor)) throw new ArgumentException($"tensor '{name}' is given twice", nameof(tensors));
            plan.Add(PlannedTensor.Of(name, tensor));
        }
        WriteStreaming(path, plan, name => byName[name], metadata);
    }

    /// <summary>
    /// Writes the planned tensors in plan order, calling <paramref name="produce"/> for each just
    /// before its bytes are written, inside its own dispose scope: whatever produce creates is freed
    /// before the next tensor, while tensors that existed before the call (a live parameter) are left
    /// alone. A produced tensor of another dtype is converted to the planned one; a shape other than
    /// the planned one is an error (the header is already written).
    /// </summary>
    public static void WriteStreaming(string path, IReadOnlyList<PlannedTensor> plan, Func<string, Tensor> produce, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var header = BuildHeader(plan, metadata);
        AtomicFile.Write(path, stream =>
        {
            Span<byte> prefix = stackalloc byte[8];
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
            stream.Write(prefix);
            stream.Write(header);
            foreach (var entry in plan)
            {
                using var scope = NewDisposeScope();
                var tensor = produce(entry.Name);
                if (!tensor.shape.SequenceEqual(entry.Shape))
                    throw new InvalidOperationException($"{path}: tensor '{entry.Name}' was planned as [{string.Join(", ", entry.Shape)}] but produced as [{string.Join(", ", tensor.shape)}]");
                TensorBytes.WriteTo(stream, tensor.dtype == entry.DType ? tensor : tensor.to(entry.DType));
            }
        });
    }

    /// <summary>The JSON header, space-padded to a multiple of 8 bytes; offsets are relative to the end of the header.</summary>
    public static byte[] BuildHeader(IReadOnlyList<PlannedTensor> plan, IReadOnlyDictionary<string, string>? metadata = null)
    {
        using var buffer = new MemoryStream();
        // Names stay literal UTF-8 (as Python writes them) rather than \u-escaped.
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                json.WriteStartObject("__metadata__");
                foreach (var (key, value) in metadata) json.WriteString(key, value);
                json.WriteEndObject();
            }
            var names = new HashSet<string>(StringComparer.Ordinal);
            long offset = 0;
            foreach (var entry in plan)
            {
                if (string.IsNullOrEmpty(entry.Name) || entry.Name == "__metadata__")
                    throw new ArgumentException($"'{entry.Name}' cannot name a tensor", nameof(plan));
                if (!names.Add(entry.Name)) throw new ArgumentException($"tensor '{entry.Name}' is planned twice", nameof(plan));
                if (entry.Shape.Any(d => d < 0)) throw new ArgumentException($"tensor '{entry.Name}' has a negative dimension", nameof(plan));
                json.WriteStartObject(entry.Name);
                json.WriteString("dtype", SafeTensorsDType.FromScalarType(entry.DType));
                json.WriteStartArray("shape");
                foreach (var d in entry.Shape) json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                offset += entry.ByteSize;
                json.WriteNumberValue(offset);
                json.WriteEndArray();
                json.WriteEndObject();
            }
            json.WriteEndObject();
        }
        var padding = (int)((8 - buffer.Length % 8) % 8);
        for (var i = 0; i < padding; i++) buffer.WriteByte((byte)' ');
        return buffer.ToArray();
    }
}
