using System.Runtime.InteropServices;
using CombaDistill.Runtime;
using CombaDistill.Runtime.Cuda;
using CombaDistill.Tests.Support;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Runtime;

/// <summary>The CUDA kernel infrastructure's parts that need no GPU: library search, cache keys and files, argument layout, the probe's answer here.</summary>
public class CudaRuntimeTests
{
    static string Touch(string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, "not really a library");
        return path;
    }

    [Fact]
    public void NVRTC_is_looked_for_in_the_documented_order()
    {
        using var temp = new TempDir();
        var site = temp["site-packages"];
        Directory.CreateDirectory(Path.Combine(site, "torch", "lib"));
        var explicitFile = Touch(temp["custom/libnvrtc-mine.so"]);
        var pipCu13 = Touch(Path.Combine(site, "nvidia", "cu13", "lib", "libnvrtc.so.13"));
        var pipCu12 = Touch(Path.Combine(site, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so.12"));
        var cudaHome = Touch(temp["home/lib64/libnvrtc.so.12"]);
        var cudaPath = Touch(temp["path/lib64/libnvrtc.so"]);
        var toolkit = Touch(temp["toolkit/lib64/libnvrtc.so.11.2"]);
        var search = new NvrtcSearch(explicitFile, Path.Combine(site, "torch", "lib"), temp["home"], temp["path"], temp["toolkit"]);

        Assert.Equal(explicitFile, CudaLibraries.LocateNvrtc(search).Path);
        search = search with { ExplicitFile = null };
        foreach (var expected in new[] { pipCu13, pipCu12, cudaHome, cudaPath, toolkit })
        {
            Assert.Equal(expected, CudaLibraries.LocateNvrtc(search).Path);
            File.Delete(expected);
        }
        var none = CudaLibraries.LocateNvrtc(search);
        Assert.Null(none.Path);
        Assert.Null(none.Problem);    // the loader's path (by soname) comes next, outside this search
        Assert.Equal(5 * CudaLibraries.NvrtcSonames.Length, none.Searched.Count);
    }

    [Fact]
    public void Within_a_folder_the_newest_soname_wins_and_the_list_is_complete()
    {
        using var temp = new TempDir();
        Touch(temp["cuda/lib64/libnvrtc.so.12"]);
        var newest = Touch(temp["cuda/lib64/libnvrtc.so.13"]);
        Touch(temp["cuda/lib64/libnvrtc.so"]);
        var search = new NvrtcSearch(null, null, temp["cuda"], null, null);
        Assert.Equal(newest, CudaLibraries.LocateNvrtc(search).Path);
        Assert.Equal(CudaLibraries.NvrtcSonames.Select(s => Path.Combine(temp["cuda"], "lib64", s)), CudaLibraries.NvrtcCandidates(search));
        Assert.Equal(["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so"], CudaLibraries.NvrtcSonames);
    }

    [Fact]
    public void A_missing_explicit_NVRTC_is_an_error_not_a_fallback()
    {
        using var temp = new TempDir();
        Touch(temp["cuda/lib64/libnvrtc.so.13"]);
        var location = CudaLibraries.LocateNvrtc(new NvrtcSearch(temp["nope/libnvrtc.so.13"], null, temp["cuda"], null, null));
        Assert.Null(location.Path);
        Assert.Contains(NvrtcSearch.EnvironmentVariable, location.Problem);
        Assert.Contains(temp["nope/libnvrtc.so.13"], location.Problem);
    }

    [Fact]
    public void Compiler_options_are_the_fixed_ones_then_line_info_defines_and_extras()
    {
        var options = new KernelCompileOptions { Defines = ["HEAD_DIM=128", "CAUSAL"], ExtraOptions = ["--fmad=false"] };
        Assert.Equal(["-arch=sm_90a", "--std=c++17", "-default-device", "-lineinfo", "-DHEAD_DIM=128", "-DCAUSAL", "--fmad=false"],
            KernelCache.CompilerOptions("sm_90a", options));
        Assert.Equal(["-arch=sm_80", "--std=c++17", "-default-device"], KernelCache.CompilerOptions("sm_80", new KernelCompileOptions { LineInfo = false }));
        Assert.Throws<ArgumentException>(() => KernelCache.CompilerOptions("sm_90", new KernelCompileOptions { Defines = ["A B"] }));
    }

    [Fact]
    public void The_cache_key_changes_with_every_input_and_only_with_them()
    {
        string Key(string source = "k", string option = "-lineinfo", string name = "f", int minor = 0, string arch = "sm_90") =>
            KernelCache.CacheKey(source, ["-arch=" + arch, option], [name], (13, minor), arch);
        var baseline = Key();
        Assert.Matches("^[0-9a-f]{64}$", baseline);
        Assert.Equal(baseline, Key());
        string[] variants = [Key(source: "k "), Key(option: "-DX"), Key(name: "g"), Key(minor: 1), Key(arch: "sm_90a")];
        Assert.All(variants, v => Assert.NotEqual(baseline, v));
        Assert.Equal(variants.Length, variants.Distinct().Count());
        // fields are length-prefixed: moving text from one field to the next is a different key
        Assert.NotEqual(KernelCache.CacheKey("ab", ["x"], ["f"], (13, 0), "sm_90"), KernelCache.CacheKey("b", ["xa"], ["f"], (13, 0), "sm_90"));
    }

    [Fact]
    public void Cache_files_round_trip_and_any_damage_reads_as_absent()
    {
        var cubin = Enumerable.Range(0, 3000).Select(i => (byte)(i * 7)).ToArray();
        var compiled = new NvrtcOutput(cubin, new Dictionary<string, string> { ["scan<128>"] = "_Z4scanILi128EEvPf", ["probe"] = "probe" }, "log");
        var file = CubinCacheFile.Serialize(compiled);
        var back = CubinCacheFile.TryDeserialize(file)!;
        Assert.Equal(cubin, back.Cubin);
        Assert.Equal(compiled.LoweredNames.OrderBy(p => p.Key), back.LoweredNames.OrderBy(p => p.Key));

        Assert.Null(CubinCacheFile.TryDeserialize(file[..^1]));                       // cut short
        Assert.Null(CubinCacheFile.TryDeserialize(file[..40]));                       // header only
        Assert.Null(CubinCacheFile.TryDeserialize([]));
        Assert.Null(CubinCacheFile.TryDeserialize([.. file, 0]));                     // trailing byte
        foreach (var at in new[] { 0, 10, 45, file.Length / 2, file.Length - 1 })   // magic, hash, names, cubin
        {
            var flipped = (byte[])file.Clone();
            flipped[at] ^= 0x20;
            Assert.Null(CubinCacheFile.TryDeserialize(flipped));
        }
    }

    [Fact]
    public void The_default_cache_folder_follows_the_environment()
    {
        var saved = (Environment.GetEnvironmentVariable(KernelCache.CacheEnvironmentVariable), Environment.GetEnvironmentVariable("XDG_CACHE_HOME"));
        try
        {
            Environment.SetEnvironmentVariable(KernelCache.CacheEnvironmentVariable, "/tmp/cd-cache");
            Environment.SetEnvironmentVariable("XDG_CACHE_HOME", "/tmp/xdg");
            Assert.Equal("/tmp/cd-cache/kernels", KernelCache.DefaultDirectory());
            Environment.SetEnvironmentVariable(KernelCache.CacheEnvironmentVariable, null);
            Assert.Equal("/tmp/xdg/combadistill/kernels", KernelCache.DefaultDirectory());
            Environment.SetEnvironmentVariable("XDG_CACHE_HOME", null);
            Assert.Equal(Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "combadistill", "kernels"), KernelCache.DefaultDirectory());
        }
        finally
        {
            Environment.SetEnvironmentVariable(KernelCache.CacheEnvironmentVariable, saved.Item1);
            Environment.SetEnvironmentVariable("XDG_CACHE_HOME", saved.Item2);
        }
    }

    [Fact]
    public void Arguments_are_passed_with_exactly_their_own_width()
    {
        Assert.Equal(BitConverter.GetBytes(1.5f), KernelArgument.Bytes(1.5f));
        Assert.Equal(BitConverter.GetBytes(-2.25), KernelArgument.Bytes(-2.25));
        Assert.Equal(BitConverter.GetBytes(-7), KernelArgument.Bytes(-7));
        Assert.Equal(BitConverter.GetBytes(3_000_000_000u), KernelArgument.Bytes(3_000_000_000u));
        Assert.Equal(BitConverter.GetBytes(-5L << 40), KernelArgument.Bytes(-5L << 40));
        Assert.Equal(BitConverter.GetBytes(ulong.MaxValue - 1), KernelArgument.Bytes(ulong.MaxValue - 1));
        Assert.Equal(new byte[] { 0x80, 0x3F }, KernelArgument.Bytes((ushort)0x3F80));   // bf16 1.0
        Assert.Equal(BitConverter.GetBytes((short)-3), KernelArgument.Bytes((short)-3));
        Assert.Equal(new byte[] { 1 }, KernelArgument.Bytes(true));
        Assert.Equal(BitConverter.GetBytes(0x1234_5678_9ABCL), KernelArgument.Bytes(new IntPtr(0x1234_5678_9ABCL)));
        var e = Assert.Throws<ArgumentException>(() => KernelArgument.Bytes("text"));
        Assert.Contains("String", e.Message);
        Assert.Throws<ArgumentException>(() => KernelArgument.Bytes(1.0m));
    }

    [Fact]
    public void Data_pointers_address_the_first_element_of_any_dtype_and_view()
    {
        using var scope = NewDisposeScope();
        var floats = arange(10, dtype: ScalarType.Float32);
        var start = TensorMemory.DataPointer(floats);
        Assert.Equal(4f, BitConverter.Int32BitsToSingle(Marshal.ReadInt32(start, 4 * 4)));
        var view = floats.narrow(0, 3, 5);                       // same storage, offset 3
        Assert.Equal(start + 3 * 4, TensorMemory.DataPointer(view));
        Assert.Equal(3f, BitConverter.Int32BitsToSingle(Marshal.ReadInt32(TensorMemory.DataPointer(view))));

        var bf16 = tensor(new float[] { 1f, -2f }).to(ScalarType.BFloat16);   // bf16 has no managed storage type in TorchSharp
        var p = TensorMemory.DataPointer(bf16);
        Assert.Equal(0x3F80, (ushort)Marshal.ReadInt16(p));
        Assert.Equal(0xC000, (ushort)Marshal.ReadInt16(p, 2));
        Assert.Equal(IntPtr.Zero, TensorMemory.DataPointer(empty(0)));
    }

    [Fact]
    public void The_library_embeds_the_probe_kernel()
    {
        Assert.Contains(CudaKernels.ProbeResource, KernelSource.EmbeddedKernels());
        var probe = KernelSource.FromResource(CudaKernels.ProbeResource);
        Assert.Equal("kernels/probe.cu", probe.FileName);
        Assert.Contains($"__global__ void {CudaKernels.ProbeKernel}(", probe.Text);
        var e = Assert.Throws<ArgumentException>(() => KernelSource.FromResource("kernels/nope.cu"));
        Assert.Contains("kernels/probe.cu", e.Message);
    }

    [Fact]
    public void A_CPU_device_is_never_a_kernel_device()
    {
        Assert.Equal("cpu is not a CUDA device", CudaKernels.UnavailableReason(CPU));
        Assert.True(CudaKernels.TryGetUnavailableReason(CPU, out var reason));
        Assert.Equal("cpu is not a CUDA device", reason);
        Assert.Contains("not a CUDA device", Assert.Throws<CudaUnavailableException>(() => CudaDevice.For(CPU)).Message);
    }

    [Fact]
    public void Without_CUDA_the_probe_says_so_in_one_line()
    {
        Assert.SkipWhen(TorchRuntime.CudaAvailable, "CUDA is available here; the GPU lane checks the probe passes");
        var reason = CudaKernels.UnavailableReason(new Device(TorchSharp.DeviceType.CUDA, 0));   // (torch.CUDA itself throws without CUDA)
        Assert.NotNull(reason);
        Assert.Contains("CUDA is not available", reason);
        Assert.DoesNotContain('\n', reason);
    }

    [Fact]
    public void A_fallback_notice_is_reported_once_per_op_and_reason()
    {
        var saved = CudaKernels.Notices;
        var lines = new List<string>();
        try
        {
            CudaKernels.Notices = new ImmediateProgress<string>(lines.Add);
            var op = $"TestOp-{Guid.NewGuid():N}";      // notices are once per process: a name no other test uses
            CudaKernels.ReportFallback(op, "cpu is not a CUDA device");
            CudaKernels.ReportFallback(op, "cpu is not a CUDA device");
            CudaKernels.ReportFallback(op, "another reason");
            Assert.Equal([$"{op}: fused CUDA kernels unavailable (cpu is not a CUDA device); using the TorchSharp chunkwise path",
                          $"{op}: fused CUDA kernels unavailable (another reason); using the TorchSharp chunkwise path"], lines);
        }
        finally
        {
            CudaKernels.Notices = saved;
        }
    }
}
