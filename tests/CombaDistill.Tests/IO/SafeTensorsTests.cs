using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using CombaDistill.IO;
using CombaDistill.Tests.Support;
using static TorchSharp.torch;

namespace CombaDistill.Tests.IO;

public class SafeTensorsTests
{
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
        Assert.Equal("pt", file.Metadata["format"]);
        foreach (var (name, original) in tensors)
        {
            using var read = file.Read(name);
            Assert.Equal(dtype, read.dtype);
            Assert.Equal(original.shape, read.shape);
            Assert.Equal(RawSafeTensors.BytesOf(original), RawSafeTensors.BytesOf(read));
        }
        Assert.Equal(new long[] { 3, 5 }, file.Tensors["m"].Shape);
        Assert.Empty(file.Tensors["s"].Shape);
        Assert.Equal(0, file.Tensors["e"].ByteSize);
        // Written contiguously, in the order given.
        var item = (long)(dtype == ScalarType.Float32 ? 4 : 2);
        Assert.Equal(file.DataOffset, file.Tensors["m"].Begin);
        Assert.Equal(file.Tensors["m"].End, file.Tensors["s"].Begin);
        Assert.Equal(file.Tensors["s"].End, file.Tensors["e"].Begin);
        Assert.Equal(file.Tensors["e"].End, file.Tensors["c"].Begin);
        Assert.Equal(file.DataOffset + (15 + 1 + 0 + 24) * item, file.Length);
    }

    [Theory]
    [InlineData(ScalarType.Float64, "F64")]
    [InlineData(ScalarType.Int64, "I64")]
    [InlineData(ScalarType.Int32, "I32")]
    [InlineData(ScalarType.Int16, "I16")]
    [InlineData(ScalarType.Int8, "I8")]
    [InlineData(ScalarType.Byte, "U8")]
    [InlineData(ScalarType.Bool, "BOOL")]
    public void Other_dtypes_round_trip_with_their_safetensors_names(ScalarType dtype, string name)
    {
        using var dir = new TempDir();
        using var original = (randn(4, 3, generator: manual_seed(3)) * 50).to(dtype);
        SafeTensorsWriter.Write(dir["t.safetensors"], [new("x", original)]);
        using var file = SafeTensorsFile.Open(dir["t.safetensors"]);
        Assert.Equal(name, file.Tensors["x"].DType);
        using var read = file.Read("x");
        Assert.Equal(dtype, read.dtype);
        Assert.Equal(RawSafeTensors.BytesOf(original), RawSafeTensors.BytesOf(read));
    }

    [Fact]
    public void Writer_output_is_byte_for_byte_the_spec_layout()
    {
        using var dir = new TempDir();
        var path = dir["tiny.safetensors"];
        using var a = tensor(new[] { 1.0f, -2.0f });
        using var b = tensor(1.5f).to(ScalarType.Float16);
        SafeTensorsWriter.Write(path, [new("a", a), new("b", b)], new Dictionary<string, string> { ["format"] = "pt" });

        var json = """{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[],"data_offsets":[8,10]}}""";
        var padded = json + new string(' ', (8 - json.Length % 8) % 8);
        // 1.0f, -2.0f little-endian, then half 1.5 = 0x3E00.
        byte[] data = [0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0xC0, 0x00, 0x3E];
        Assert.Equal(RawSafeTensors.Build(padded, data), File.ReadAllBytes(path));
    }

    [Fact]
    public void Header_is_padded_to_8_bytes_and_parses_with_the_exact_offsets()
    {
        using var dir = new TempDir();
        var path = dir["t.safetensors"];
        var shapes = new long[][] { [3], [2, 5], [7], [1, 1, 3] };
        var tensors = shapes.Select((s, i) => new KeyValuePair<string, Tensor>($"w{i}", ones(s, dtype: i % 2 == 0 ? ScalarType.Float32 : ScalarType.BFloat16))).ToList();
        SafeTensorsWriter.Write(path, tensors);

        var bytes = File.ReadAllBytes(path);
        var headerLength = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(0, headerLength % 8);
        Assert.Equal(0, (8 + headerLength) % 8);
        using var doc = JsonDocument.Parse(bytes.AsMemory(8, (int)headerLength));
        long offset = 0;
        foreach (var (name, t) in tensors)
        {
            var entry = doc.RootElement.GetProperty(name);
            var size = t.numel() * t.ElementSize;
            Assert.Equal([offset, offset + size], entry.GetProperty("data_offsets").EnumerateArray().Select(e => e.GetInt64()).ToArray());
            Assert.Equal(t.shape, entry.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()).ToArray());
            offset += size;
        }
        Assert.Equal(8 + headerLength + offset, bytes.Length);
        foreach (var t in tensors) t.Value.Dispose();
    }

    [Fact]
    public void Header_is_padded_with_spaces_whatever_its_natural_length()
    {
        using var dir = new TempDir();
        using var x = ones(1);
        // Names of 1..8 characters give every residue of the unpadded length modulo 8.
        for (var k = 1; k <= 8; k++)
        {
            var path = dir[$"n{k}.safetensors"];
            SafeTensorsWriter.Write(path, [new(new string('w', k), x)]);
            var bytes = File.ReadAllBytes(path);
            var headerLength = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
            Assert.Equal(0, headerLength % 8);
            var header = Encoding.UTF8.GetString(bytes, 8, headerLength);
            var json = header.TrimEnd(' ');
            Assert.EndsWith("}", json);
            Assert.True(header.Length - json.Length < 8);
            Assert.Equal(bytes.Length, 8 + headerLength + 4);
        }
    }

    [Fact]
    public void Reads_a_hand_built_file_with_unpadded_header_and_metadata()
    {
        using var dir = new TempDir();
        var header = """{"b":{"data_offsets":[8,16],"shape":[2],"dtype":"F32"},"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]}}""";
        var path = RawSafeTensors.Write(dir, "h.safetensors", header, RawSafeTensors.Floats(0.5f, 2f, 3.25f, -7f));
        using var file = SafeTensorsFile.Open(path);
        Assert.Equal("v", file.Metadata["k"]);
        using var a = file.Read("a");
        using var b = file.Read("b");
        Assert.Equal(new long[] { 1, 2 }, a.shape);
        Assert.Equal([0.5f, 2f], a.data<float>().ToArray());
        Assert.Equal([3.25f, -7f], b.data<float>().ToArray());
    }

    [Fact]
    public void Read_converts_dtype_on_request()
    {
        using var dir = new TempDir();
        var path = RawSafeTensors.Write(dir, "h.safetensors", """{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}""", RawSafeTensors.Floats(1f, 0.1f, -3f));
        using var file = SafeTensorsFile.Open(path);
        using var d = file.Read("a", ScalarType.Float64);
        Assert.Equal(ScalarType.Float64, d.dtype);
        Assert.Equal([1.0, (double)0.1f, -3.0], d.data<double>().ToArray());
    }

    [Fact]
    public void Streaming_write_equals_eager_write_and_produces_each_tensor_once_in_order()
    {
        using var dir = new TempDir();
        var source = Enumerable.Range(0, 5).Select(i => (Name: $"layer.{i}", Tensor: randn(new long[] { i + 1, 3 }, generator: manual_seed(i)))).ToList();
        SafeTensorsWriter.Write(dir["eager.safetensors"], source.Select(s => new KeyValuePair<string, Tensor>(s.Name, s.Tensor)), new Dictionary<string, string> { ["m"] = "1" });

        var plan = source.Select(s => new PlannedTensor(s.Name, ScalarType.Float32, s.Tensor.shape)).ToList();
        var produced = new List<string>();
        SafeTensorsWriter.WriteStreaming(dir["streamed.safetensors"], plan, name =>
        {
            produced.Add(name);
            return source.Single(s => s.Name == name).Tensor.clone();
        }, new Dictionary<string, string> { ["m"] = "1" });

        Assert.Equal(plan.Select(p => p.Name), produced);
        Assert.Equal(File.ReadAllBytes(dir["eager.safetensors"]), File.ReadAllBytes(dir["streamed.safetensors"]));
        foreach (var s in source) s.Tensor.Dispose();
    }

    [Fact]
    public void Streaming_write_converts_to_the_planned_dtype()
    {
        using var dir = new TempDir();
        using var x = randn(4, 4, generator: manual_seed(9));
        SafeTensorsWriter.WriteStreaming(dir["t.safetensors"], [new PlannedTensor("x", ScalarType.BFloat16, [4, 4])], _ => x);
        using var file = SafeTensorsFile.Open(dir["t.safetensors"]);
        Assert.Equal("BF16", file.Tensors["x"].DType);
        using var read = file.Read("x");
        using var expected = x.to(ScalarType.BFloat16);
        Assert.Equal(RawSafeTensors.BytesOf(expected), RawSafeTensors.BytesOf(read));
    }

    [Fact]
    public void Reads_one_tensor_on_demand_from_its_own_bytes_only()
    {
        using var dir = new TempDir();
        var path = dir["t.safetensors"];
        using var a = randn(8, generator: manual_seed(1));
        using var b = randn(16, generator: manual_seed(2));
        using var c = randn(4, generator: manual_seed(3));
        SafeTensorsWriter.Write(path, [new("a", a), new("b", b), new("c", c)]);

        using var file = SafeTensorsFile.Open(path);
        // Everything outside b's bytes becomes garbage after the header was read.
        using (var stream = new FileStream(path, FileMode.Open, FileAccess.Write))
        {
            foreach (var name in new[] { "a", "c" })
            {
                var info = file.Tensors[name];
                stream.Position = info.Begin;
                stream.Write(Enumerable.Repeat((byte)0xFF, (int)info.ByteSize).ToArray());
            }
        }
        using var readB = file.Read("b");
        Assert.Equal(RawSafeTensors.BytesOf(b), RawSafeTensors.BytesOf(readB));
        using var readA = file.Read("a");
        Assert.All(RawSafeTensors.BytesOf(readA), x => Assert.Equal(0xFF, x));
    }

    [Fact]
    public void Reads_a_tensor_past_a_3_GB_region_of_a_sparse_file()
    {
        using var dir = new TempDir();
        var path = dir["sparse.safetensors"];
        const long big = 3_000_000_000;
        var header = "{\"big\":{\"dtype\":\"U8\",\"shape\":[" + big + "],\"data_offsets\":[0," + big + "]},"
            + "\"small\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[" + big + "," + (big + 8) + "]}}";
        using (var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write))
        {
            stream.Write(RawSafeTensors.Build(header, []));
            var dataStart = stream.Position;
            stream.SetLength(dataStart + big + 8);
            stream.Position = dataStart + big;
            stream.Write(RawSafeTensors.Floats(1.5f, -3f));
        }
        using var file = SafeTensorsFile.Open(path);
        Assert.Equal(big, file.Tensors["big"].ByteSize);
        using var small = file.Read("small");
        Assert.Equal([1.5f, -3f], small.data<float>().ToArray());
    }

    [Fact]
    public void Chunked_reads_and_writes_cross_chunk_boundaries_correctly()
    {
        using var dir = new TempDir();
        var values = Enumerable.Range(0, 10).Select(i => i * 1.25f - 3f).ToArray();
        var path = RawSafeTensors.Write(dir, "c.safetensors", """{"x":{"dtype":"F32","shape":[2,5],"data_offsets":[0,40]}}""", RawSafeTensors.Floats(values));
        using var file = SafeTensorsFile.Open(path);
        using var target = empty(new long[] { 2, 5 }, dtype: ScalarType.Float32);
        using (var handle = File.OpenHandle(path))
            TensorBytes.ReadInto(handle, file.Tensors["x"].Begin, target, path, maxChunkBytes: 12);
        Assert.Equal(values, target.data<float>().ToArray());

        using var stream = new MemoryStream();
        TensorBytes.WriteTo(stream, target, maxChunkBytes: 8);
        Assert.Equal(RawSafeTensors.Floats(values), stream.ToArray());
    }

    [Fact]
    public void Writes_non_contiguous_tensors_as_their_logical_layout()
    {
        using var dir = new TempDir();
        using var x = arange(6, dtype: ScalarType.Float32).reshape(2, 3);
        using var xt = x.t();
        SafeTensorsWriter.Write(dir["t.safetensors"], [new("xt", xt)]);
        using var file = SafeTensorsFile.Open(dir["t.safetensors"]);
        using var read = file.Read("xt");
        Assert.Equal([0f, 3f, 1f, 4f, 2f, 5f], read.data<float>().ToArray());
    }

    [Fact]
    public void A_failed_write_leaves_no_partial_file_and_keeps_the_old_one()
    {
        using var dir = new TempDir();
        var path = dir["t.safetensors"];
        var old = Encoding.UTF8.GetBytes("previous contents");
        File.WriteAllBytes(path, old);
        using var x = ones(3);
        var plan = new[] { new PlannedTensor("x", ScalarType.Float32, [3]), new PlannedTensor("y", ScalarType.Float32, [3]) };

        Assert.Throws<IOException>(() => SafeTensorsWriter.WriteStreaming(path, plan, name => name == "y" ? throw new IOException("disk on fire") : x));
        Assert.Equal(old, File.ReadAllBytes(path));
        Assert.Equal([path], Directory.GetFileSystemEntries(dir.Path));

        // A produced shape other than the planned one is refused, also without leaving anything behind.
        var fresh = dir["fresh.safetensors"];
        var ex = Assert.Throws<InvalidOperationException>(() => SafeTensorsWriter.WriteStreaming(fresh, plan, _ => ones(4)));
        Assert.Contains("planned as [3] but produced as [4]", ex.Message);
        Assert.False(File.Exists(fresh));
        Assert.Equal([path], Directory.GetFileSystemEntries(dir.Path));
    }

    [Fact]
    public void Writing_again_truncates_the_previous_file()
    {
        using var dir = new TempDir();
        var path = dir["t.safetensors"];
        using var big = ones(1000);
        using var small = ones(2);
        SafeTensorsWriter.Write(path, [new("x", big)]);
        SafeTensorsWriter.Write(path, [new("x", small)]);
        using var file = SafeTensorsFile.Open(path);
        Assert.Equal(file.DataOffset + 8, new FileInfo(path).Length);
    }

    [Fact]
    public void Writer_refuses_duplicate_and_reserved_names()
    {
        using var dir = new TempDir();
        using var x = ones(1);
        Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Write(dir["a.safetensors"], [new("x", x), new("x", x)]));
        Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Write(dir["b.safetensors"], [new("__metadata__", x)]));
        Assert.Empty(Directory.GetFileSystemEntries(dir.Path));
    }
}
