using CombaDistill.IO;
using CombaDistill.Tests.Support;
using static TorchSharp.torch;

namespace CombaDistill.Tests.IO;

public class SafeTensorsRoundTripTests
{
    static byte[] BytesOf(Tensor t)
    {
        var result = new byte[t.numel() * t.ElementSize];
        var at = 0;
        TensorBytes.ForEachChunk(t.contiguous(), (span, _) => { span.CopyTo(result.AsSpan(at)); at += span.Length; });
        return result;
    }

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.Float16)]
    [InlineData(ScalarType.BFloat16)]
    public void Round_trip_is_bitwise_including_scalar_and_empty(ScalarType dtype)
    {
        using var dir = new TempDir();
        var path = dir["t.safetensors"];
        using var matrix = randn(3, 5, generator: manual_seed(1)).to(dtype);
        using var scalar = tensor(-2.75f).to(dtype);
        using var empty = zeros(new long[] { 0, 4 }, dtype: dtype);
        using var cube = randn(2, 3, 4, generator: manual_seed(2)).to(dtype);
        var tensors = new Dictionary<string, Tensor> { ["m"] = matrix, ["s"] = scalar, ["e"] = empty, ["c"] = cube };
        SafeTensorsWriter.Write(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });

        using var file = SafeTensorsFile.Open(path);
        Assert.Equal(["m", "s", "e", "c"], file.Tensors.Keys.ToArray());
        Assert.Equal("pt", file.Metadata["format"]);
        foreach (var (name, original) in tensors)
        {
            using var read = file.Read(name);
            Assert.Equal(dtype, read.dtype);
            Assert.Equal(original.shape, read.shape);
            Assert.Equal(BytesOf(original), BytesOf(read));
        }
    }
}
