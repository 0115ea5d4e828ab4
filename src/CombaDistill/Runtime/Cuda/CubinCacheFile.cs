using System.Security.Cryptography;
using System.Text;

namespace CombaDistill.Runtime.Cuda;

/// <summary>
/// The on-disk form of one compiled kernel source: a magic, a SHA-256 of the body, then the body (the lowered
/// name of each requested kernel, then the CUBIN). A file cut short or altered fails the hash and reads as absent,
/// so it is compiled again and replaced, never loaded.
/// <code>
///   "CDCUBIN1"  sha256(body)[32]  body = int32 n, n × (string expression, string lowered), int64 length, cubin[length]
/// </code>
/// Strings are an int32 byte count and UTF-8; integers little-endian.
/// </summary>
public static class CubinCacheFile
{
    static readonly byte[] Magic = "CDCUBIN1"u8.ToArray();
    const int HashBytes = 32;

    public static byte[] Serialize(NvrtcOutput compiled)
    {
        using var body = new MemoryStream();
        using (var w = new BinaryWriter(body, Encoding.UTF8, leaveOpen: true))
        {
            w.Write(compiled.LoweredNames.Count);
            foreach (var (expression, lowered) in compiled.LoweredNames.OrderBy(p => p.Key, StringComparer.Ordinal))
            {
                WriteString(w, expression);
                WriteString(w, lowered);
            }
            w.Write((long)compiled.Cubin.Length);
            w.Write(compiled.Cubin);
        }
        var bodyBytes = body.ToArray();
        return [.. Magic, .. SHA256.HashData(bodyBytes), .. bodyBytes];
    }

    /// <summary>The cached compilation, or null when the bytes are not an intact cache file (the log is not kept).</summary>
    public static NvrtcOutput? TryDeserialize(byte[] file)
    {
        if (file.Length < Magic.Length + HashBytes || !file.AsSpan(0, Magic.Length).SequenceEqual(Magic)) return null;
        var body = file.AsSpan(Magic.Length + HashBytes);
        if (!SHA256.HashData(body).AsSpan().SequenceEqual(file.AsSpan(Magic.Length, HashBytes))) return null;
        try
        {
            using var r = new BinaryReader(new MemoryStream(file, Magic.Length + HashBytes, body.Length), Encoding.UTF8);
            var count = r.ReadInt32();
            var names = new Dictionary<string, string>();
            for (int i = 0; i < count; i++) names[ReadString(r)] = ReadString(r);
            var length = r.ReadInt64();
            var cubin = r.ReadBytes(checked((int)length));
            return cubin.Length == length && r.BaseStream.Position == r.BaseStream.Length ? new NvrtcOutput(cubin, names, "") : null;
        }
        catch (Exception e) when (e is EndOfStreamException or OverflowException or ArgumentException or DecoderFallbackException)
        {
            return null;
        }
    }

    static void WriteString(BinaryWriter w, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        w.Write(bytes.Length);
        w.Write(bytes);
    }

    static string ReadString(BinaryReader r)
    {
        var length = r.ReadInt32();
        var bytes = r.ReadBytes(length);
        if (bytes.Length != length) throw new EndOfStreamException();
        return Encoding.UTF8.GetString(bytes);
    }
}
