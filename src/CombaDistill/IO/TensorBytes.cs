using Microsoft.Win32.SafeHandles;
using static TorchSharp.torch;

namespace CombaDistill.IO;

/// <summary>
/// Moves a CPU tensor's raw bytes to and from files without an intermediate managed copy.
/// TorchSharp exposes a tensor's memory as a Span, which is limited to 2 GiB, so large tensors
/// go through 1-D views of at most <c>maxChunkBytes</c> each.
/// </summary>
public static class TensorBytes
{
    public const long DefaultChunkBytes = 1L << 30;

    /// <summary>Visits the bytes of a contiguous CPU tensor in order, in spans of at most <paramref name="maxChunkBytes"/>.</summary>
    public static void ForEachChunk(Tensor tensor, SpanVisitor visit, long maxChunkBytes = DefaultChunkBytes)
    {
        if (tensor.device_type != TorchSharp.DeviceType.CPU || !tensor.is_contiguous())
            throw new ArgumentException("tensor must be contiguous and on the CPU", nameof(tensor));
        var count = tensor.numel();
        if (count == 0) return;
        var itemSize = tensor.ElementSize;
        var perChunk = Math.Max(1, maxChunkBytes / itemSize);
        if (count <= perChunk)
        {
            visit(tensor.bytes, 0);
            return;
        }
        using var flat = tensor.view(-1);
        for (long start = 0; start < count; start += perChunk)
        {
            using var part = flat.narrow(0, start, Math.Min(perChunk, count - start));
            visit(part.bytes, start * itemSize);
        }
    }

    public delegate void SpanVisitor(Span<byte> bytes, long byteOffset);

    /// <summary>Fills <paramref name="tensor"/> (contiguous, CPU) with the file's bytes starting at <paramref name="fileOffset"/>.</summary>
    public static void ReadInto(SafeFileHandle file, long fileOffset, Tensor tensor, string pathForErrors, long maxChunkBytes = DefaultChunkBytes) =>
        ForEachChunk(tensor, (span, offset) =>
        {
            var position = fileOffset + offset;
            while (span.Length > 0)
            {
                var got = RandomAccess.Read(file, span, position);
                if (got == 0)
                    throw new InvalidInputException(pathForErrors, $"file ended at byte {position} while reading tensor data; truncated since it was opened?");
                span = span[got..];
                position += got;
            }
        }, maxChunkBytes);

    /// <summary>Writes the tensor's bytes (any device/layout; copied to contiguous CPU if needed).</summary>
    public static void WriteTo(Stream stream, Tensor tensor, long maxChunkBytes = DefaultChunkBytes)
    {
        var cpu = tensor.device_type == TorchSharp.DeviceType.CPU && tensor.is_contiguous() ? tensor : tensor.cpu().contiguous();
        try
        {
            ForEachChunk(cpu, (span, _) => stream.Write(span), maxChunkBytes);
        }
        finally
        {
            if (!ReferenceEquals(cpu, tensor)) cpu.Dispose();
        }
    }
}
