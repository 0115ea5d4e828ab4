using System.Buffers.Binary;
using System.Text;
using CombaDistill.IO;
using CombaDistill.Tests.Support;
using static TorchSharp.torch;

namespace CombaDistill.Tests.IO;

/// <summary>safetensors files assembled by hand from the spec, independent of the writer under test.</summary>
static class RawSafeTensors
{
    /// <summary>8-byte little-endian header length, the header, the data.</summary>
    public static byte[] Build(string header, byte[] data, ulong? declaredLength = null)
    {
        var json = Encoding.UTF8.GetBytes(header);
        var result = new byte[8 + json.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(result, declaredLength ?? (ulong)json.Length);
        json.CopyTo(result, 8);
        data.CopyTo(result, 8 + json.Length);
        return result;
    }

    public static string Write(TempDir dir, string name, string header, byte[] data, ulong? declaredLength = null)
    {
        var path = dir[name];
        File.WriteAllBytes(path, Build(header, data, declaredLength));
        return path;
    }

    public static byte[] Floats(params float[] values)
    {
        var bytes = new byte[values.Length * 4];
        for (var i = 0; i < values.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(i * 4), values[i]);
        return bytes;
    }

    public static byte[] BytesOf(Tensor t)
    {
        var result = new byte[t.numel() * t.ElementSize];
        var at = 0;
        using var c = t.contiguous();
        TensorBytes.ForEachChunk(c, (span, _) => { span.CopyTo(result.AsSpan(at)); at += span.Length; });
        return result;
    }
}
