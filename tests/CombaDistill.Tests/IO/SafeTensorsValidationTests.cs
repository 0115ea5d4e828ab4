using CombaDistill.IO;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests.IO;

/// <summary>Every malformed file is refused on open with the file's name and what is wrong.</summary>
public class SafeTensorsValidationTests
{
    static void AssertRefused(string path, string phrase)
    {
        var ex = Assert.Throws<InvalidInputException>(() => SafeTensorsFile.Open(path).Dispose());
        Assert.Contains(Path.GetFileName(path), ex.Message);
        Assert.Contains(phrase, ex.Message);
        Assert.Equal(path, ex.FilePath);
    }

    [Fact]
    public void File_shorter_than_the_length_prefix()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir["short.safetensors"], [1, 2, 3]);
        AssertRefused(dir["short.safetensors"], "is 3 bytes, shorter than the 8-byte header length");
    }

    [Fact]
    public void Header_length_past_the_end()
    {
        using var dir = new TempDir();
        var path = RawSafeTensors.Write(dir, "trunc.safetensors", "{}", [], declaredLength: 1000);
        AssertRefused(path, "header length 1000 runs past the end of the file (10 bytes)");
    }

    [Fact]
    public void Missing_file()
    {
        using var dir = new TempDir();
        AssertRefused(dir["absent.safetensors"], "file not found");
    }

    [Fact]
    public void A_folder_is_not_a_file()
    {
        using var dir = new TempDir();
        Directory.CreateDirectory(dir["weights.safetensors"]);
        AssertRefused(dir["weights.safetensors"], "is a folder; expected a .safetensors file");
    }

    [Theory]
    [InlineData("notjson", "{not json", 0, "header is not valid JSON")]
    [InlineData("array", "[1,2]", 0, "header is not a JSON object")]
    [InlineData("nodtype", """{"a":{"shape":[1],"data_offsets":[0,4]}}""", 4, "tensor 'a': entry has no dtype")]
    [InlineData("noshape", """{"a":{"dtype":"F32","data_offsets":[0,4]}}""", 4, "tensor 'a': entry has no shape")]
    [InlineData("nooffsets", """{"a":{"dtype":"F32","shape":[1]}}""", 4, "tensor 'a': entry has no data_offsets")]
    [InlineData("entrynotobject", """{"a":[1]}""", 0, "tensor 'a': entry is not a JSON object")]
    [InlineData("f8", """{"a":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}}""", 4, "tensor 'a': unsupported dtype 'F8_E4M3'")]
    [InlineData("size", """{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}""", 8, "byte size 4 (data_offsets [0, 4]) does not match shape [2] of F32, which needs 8 bytes")]
    [InlineData("overlap", """{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""", 12, "tensors 'a' and 'b' overlap")]
    [InlineData("order", """{"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}""", 4, "data_offsets [4, 0] are out of order")]
    [InlineData("pastend", """{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""", 4, "data_offsets [0, 8] run past the end of the file (the data region is 4 bytes)")]
    [InlineData("negshape", """{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}""", 4, "shape is not an array of non-negative integers")]
    [InlineData("onepoint", """{"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}}""", 4, "data_offsets is not a pair of non-negative integers")]
    [InlineData("dup", """{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""", 8, "tensor 'a' appears twice")]
    [InlineData("meta", """{"__metadata__":{"x":1}}""", 0, "__metadata__ entry 'x' is not a string")]
    [InlineData("hugeshape", """{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}""", 8, "is too large")]
    public void Malformed_header_is_refused(string name, string header, int dataBytes, string phrase)
    {
        using var dir = new TempDir();
        var path = RawSafeTensors.Write(dir, $"bad-{name}.safetensors", header, new byte[dataBytes]);
        AssertRefused(path, phrase);
    }

    [Fact]
    public void Gaps_and_trailing_bytes_outside_any_tensor_are_accepted()
    {
        using var dir = new TempDir();
        var header = """{"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""";
        var path = RawSafeTensors.Write(dir, "gaps.safetensors", header, RawSafeTensors.Floats(1f, 99f, 2f, 99f));
        using var file = SafeTensorsFile.Open(path);
        using var a = file.Read("a");
        using var b = file.Read("b");
        Assert.Equal(1f, a.item<float>());
        Assert.Equal(2f, b.item<float>());
    }

    [Fact]
    public void Reading_an_unknown_name_names_the_file_and_tensor()
    {
        using var dir = new TempDir();
        var path = RawSafeTensors.Write(dir, "one.safetensors", """{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", new byte[4]);
        using var file = SafeTensorsFile.Open(path);
        var ex = Assert.Throws<InvalidInputException>(() => file.Read("zzz"));
        Assert.Contains("one.safetensors", ex.Message);
        Assert.Contains("no tensor named 'zzz'", ex.Message);
    }

    [Fact]
    public void A_file_truncated_after_open_fails_the_read_with_a_clear_error()
    {
        using var dir = new TempDir();
        var path = RawSafeTensors.Write(dir, "shrinks.safetensors", """{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", new byte[16]);
        using var file = SafeTensorsFile.Open(path);
        using (var stream = new FileStream(path, FileMode.Open, FileAccess.Write)) stream.SetLength(file.DataOffset + 6);
        var ex = Assert.Throws<InvalidInputException>(() => file.Read("a"));
        Assert.Contains("shrinks.safetensors", ex.Message);
        Assert.Contains("truncated", ex.Message);
    }
}
