using CombaDistill.IO;
using CombaDistill.Modeling.Llama;
using CombaDistill.Tests.Support;
using static TorchSharp.torch;

namespace CombaDistill.Tests.IO;

/// <summary>
/// pytorch_model.bin files written by torch.save (tools/make_pytorch_fixtures.py; Data/pytorch), each beside a
/// model.safetensors of the same tensors written byte by byte by that script.
/// </summary>
public class PyTorchFileTests
{
    static string Fixture(params string[] parts) => Path.Combine([AppContext.BaseDirectory, "Data", "pytorch", .. parts]);

    [Theory]
    [InlineData("f32", "pytorch_model.bin", "F32")]
    [InlineData("f16", "pytorch_model.bin", "F16")]
    [InlineData("bf16", "pytorch_model.bin", "BF16")]
    [InlineData("sharded_bf16", "pytorch_model.bin.index.json", "BF16")]
    [InlineData("views_f32", "pytorch_model.bin", "F32")]
    public void Every_tensor_equals_the_same_weights_read_from_safetensors(string folder, string file, string dtype)
    {
        using var bin = Checkpoint.Open(Fixture(folder, file));
        using var safetensors = Checkpoint.Open(Fixture(folder, "model.safetensors"));
        Assert.Equal(safetensors.Names.Order(), bin.Names.Order());
        Assert.Equal(12, bin.Names.Count);
        Assert.Equal(safetensors.TotalBytes, bin.TotalBytes);
        if (folder.StartsWith("sharded")) Assert.Equal(2, bin.Files.Count);
        foreach (var name in bin.Names)
        {
            Assert.Equal(dtype, bin.Info(name).DType);
            Assert.Equal(safetensors.Info(name).Shape, bin.Info(name).Shape);
            using var a = bin.Read(name);
            using var b = safetensors.Read(name);
            Assert.True(a.is_contiguous());
            Assert.Equal(b.bytes.ToArray(), a.bytes.ToArray());
        }
    }

    [Fact]
    public void A_folder_with_only_pytorch_weights_loads_as_a_teacher_equal_to_its_safetensors_twin()
    {
        using var temp = new TempDir();
        foreach (var f in Directory.GetFiles(Fixture("sharded_bf16")).Where(f => !f.EndsWith(".safetensors")))
            File.Copy(f, Path.Combine(temp.Path, Path.GetFileName(f)));
        using var fromBin = LlamaForCausalLM.FromPretrained(temp.Path, dtype: ScalarType.Float32);
        using var fromSafetensors = LlamaForCausalLM.FromPretrained(Fixture("sharded_bf16"), dtype: ScalarType.Float32);
        using var ids = tensor(new long[] { 1, 5, 9, 30, 2 }).unsqueeze(0);
        using var _ = no_grad();
        using var a = fromBin.forward(ids);
        using var b = fromSafetensors.forward(ids);
        Assert.Equal(b.shape, a.shape);
        Assert.True(a.allclose(b, rtol: 0, atol: 0));
    }

    [Fact]
    public void Converting_from_a_pytorch_index_gives_the_student_the_safetensors_twin_gives()
    {
        using var temp = new TempDir();
        var options = new CombaDistill.Conversion.ConversionOptions();
        CombaDistill.Conversion.CombaConverter.Convert(Fixture("sharded_bf16", "pytorch_model.bin.index.json"), temp["from-bin"], options, cancellationToken: TestContext.Current.CancellationToken);
        CombaDistill.Conversion.CombaConverter.Convert(Fixture("sharded_bf16", "model.safetensors"), temp["from-safetensors"], options, cancellationToken: TestContext.Current.CancellationToken);
        using var a = Checkpoint.Open(temp["from-bin"]);
        using var b = Checkpoint.Open(temp["from-safetensors"]);
        Assert.Equal(b.Names.Order(), a.Names.Order());
        foreach (var name in a.Names)
        {
            using var x = a.Read(name);
            using var y = b.Read(name);
            Assert.Equal(y.bytes.ToArray(), x.bytes.ToArray());
        }
    }

    [Theory]
    [InlineData("code.bin", "refers to posix.system, which is neither a tensor nor a plain container")]
    [InlineData("module.bin", "refers to torch.nn.modules.linear.Linear")]
    [InlineData("namespace.bin", "refers to argparse.Namespace")]
    [InlineData("legacy.bin", "not a zip archive")]
    public void Pickles_holding_anything_but_tensors_are_refused_without_running_them(string file, string message)
    {
        var path = Fixture("refused", file);
        var e = Assert.Throws<InvalidInputException>(() => Checkpoint.Open(path).Dispose());
        Assert.Equal(path, e.FilePath);
        Assert.Contains(message, e.Message);
        if (file != "legacy.bin") Assert.Contains("a pickle can run code", e.Message);
    }

    [Fact]
    public void The_scan_lists_the_globals_torch_save_writes_for_a_state_dict()
    {
        using var zip = System.IO.Compression.ZipFile.OpenRead(Fixture("f32", "pytorch_model.bin"));
        using var s = zip.Entries.Single(e => e.Name == "data.pkl").Open();
        using var buffer = new MemoryStream();
        s.CopyTo(buffer);
        var globals = PickleScan.Globals(buffer.ToArray(), "data.pkl").Distinct().Order().ToList();
        Assert.Equal(["collections.OrderedDict", "torch.FloatStorage", "torch._utils._rebuild_tensor_v2"], globals);
    }

    [Fact]
    public void A_stack_global_from_memoized_strings_is_found_and_a_truncated_pickle_is_refused()
    {
        // protocol 4: "builtins" MEMOIZE, "eval" MEMOIZE, BINGET 0, BINGET 1, STACK_GLOBAL, STOP
        byte[] pickle = [0x80, 4, 0x8c, 8, .. "builtins"u8, 0x94, 0x8c, 4, .. "eval"u8, 0x94, (byte)'h', 0, (byte)'h', 1, 0x93, (byte)'.'];
        Assert.Equal(["builtins.eval"], PickleScan.Globals(pickle, "x"));
        var e = Assert.Throws<InvalidInputException>(() => PickleScan.RequireStateDictOnly(pickle, "x"));
        Assert.Contains("builtins.eval", e.Message);
        Assert.Contains("not a pickle torch.save writes", Assert.Throws<InvalidInputException>(() => PickleScan.Globals(pickle[..5], "x")).Message);
    }
}
