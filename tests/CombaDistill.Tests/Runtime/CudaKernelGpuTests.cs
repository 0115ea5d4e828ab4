using CombaDistill.Ops;
using CombaDistill.Tests.Ops;
using CombaDistill.Runtime.Cuda;
using CombaDistill.Runtime;
using CombaDistill.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Runtime;

/// <summary>
/// GPU lane: NVRTC → CUBIN → driver → launch on TorchSharp's stream, checked against TorchSharp's own results;
/// the disk cache (hits without NVRTC, damaged files recompiled); launch checks; events. Each test compiles into
/// its own temporary cache folder, so none depends on another's leftovers.
/// </summary>
public class CudaKernelGpuTests
{
    sealed class Fixture : IDisposable
    {
        public readonly TempDir Folder = new();
        public readonly List<KernelCache> Caches = [];
        public KernelCache NewCache()
        {
            var cache = new KernelCache(Folder.Path);
            Caches.Add(cache);
            return cache;
        }
        public void Dispose()
        {
            foreach (var c in Caches) c.Dispose();
            Folder.Dispose();
        }
    }

    static CudaModule Compile(KernelCache cache) => cache.Load(CUDA, TestKernels.Source, TestKernels.Names, TestKernels.Exact);

    static (int, int, int) Blocks(long n, int perBlock) => ((int)((n + perBlock - 1) / perBlock), 1, 1);

    [Fact]
    public void A_float32_kernel_on_TorchSharps_stream_matches_TorchSharp_exactly()
    {
        Gpu.Require();
        using var fx = new Fixture();
        using var scope = NewDisposeScope();
        var cache = fx.NewCache();
        var module = Compile(cache);
        Assert.False(module.FromDiskCache);
        Assert.Equal(1, cache.Compilations);
        var axpy = module.Kernel("axpy_f32");
        Assert.True(axpy.Registers > 0, axpy.ToString());
        Assert.Equal(0, axpy.LocalBytesPerThread);
        if (axpy.ParameterSizes is { } sizes) Assert.Equal([8, 8, 4, 4], sizes);

        const int n = 100_003;    // not a multiple of the block
        var x = randn(n, device: CUDA);
        var y = randn(n, device: CUDA);
        var expected = x * 0.75f + y;                      // queued on the same stream before the kernel overwrites y
        axpy.Launch(Blocks(n, 256), (256, 1, 1), 0, y, x, 0.75f, n);
        Assert.True(y.eq(expected).all().item<bool>(), "y = 0.75·x + y differs from TorchSharp's (compiled with --fmad=false, both round twice)");
    }

    [Fact]
    public void A_bf16_kernel_on_raw_16_bit_values_rounds_to_nearest_even_like_TorchSharp()
    {
        Gpu.Require();
        using var fx = new Fixture();
        using var scope = NewDisposeScope();
        var kernel = Compile(fx.NewCache()).Kernel("axpy_bf16");
        const int n = 4099;
        var x = randn(n, device: CUDA).to(ScalarType.BFloat16);
        var y = randn(n, device: CUDA) * 0.01f;
        // Exact ties: 1 + 2⁻⁸ lies halfway between bf16 1.0 and 1.0078125 (rounds down to the even 1.0), and
        // 1.0078125 + 2⁻⁸ halfway between 1.0078125 and 1.015625 (rounds up to the even 1.015625).
        x[0] = 1.0f; y[0] = 1f / 256;
        x[1] = 1.0078125f; y[1] = 1f / 256;
        var output = empty(n, dtype: ScalarType.BFloat16, device: CUDA);
        kernel.Launch(Blocks(n, 128), (128, 1, 1), 0, output, x, y, 1.0f, n);

        var expected = (x.to(ScalarType.Float32) * 1.0f + y).to(ScalarType.BFloat16);
        Assert.True(output.cpu().bytes.SequenceEqual(expected.cpu().bytes), "bf16 bits differ from TorchSharp's conversion");
        Assert.Equal(1.0f, output[0].to(ScalarType.Float32).item<float>());
        Assert.Equal(1.015625f, output[1].to(ScalarType.Float32).item<float>());
    }

    [Fact]
    public void A_second_cache_loads_from_disk_without_NVRTC()
    {
        Gpu.Require();
        using var fx = new Fixture();
        using var scope = NewDisposeScope();
        var first = fx.NewCache();
        Compile(first);
        var files = Directory.GetFiles(fx.Folder.Path, "test_kernels-*.cubin");
        Assert.Single(files);

        var second = fx.NewCache();     // a fresh process, as far as the cache can tell
        var module = Compile(second);
        Assert.True(module.FromDiskCache);
        Assert.Equal(0, second.Compilations);
        Assert.Equal(1, second.DiskHits);
        Assert.Same(module, Compile(second));     // and in memory after that
        Assert.Equal(1, second.DiskHits);

        var fill = module.Kernel("fill<3>");
        Assert.StartsWith("_Z", fill.LoweredName);
        var output = zeros(32, device: CUDA);
        fill.Launch((1, 1, 1), (32, 1, 1), 0, output);
        Assert.True(output.cpu().eq(arange(32, dtype: ScalarType.Float32) + 3000).all().item<bool>());
    }

    [Fact]
    public void A_damaged_cache_file_is_compiled_again_and_replaced()
    {
        Gpu.Require();
        using var fx = new Fixture();
        using var scope = NewDisposeScope();
        Compile(fx.NewCache());
        var file = Directory.GetFiles(fx.Folder.Path, "*.cubin").Single();
        var bytes = File.ReadAllBytes(file);
        File.WriteAllBytes(file, bytes[..(bytes.Length / 2)]);     // cut short, as by a crash mid-write of a foreign tool

        var cache = fx.NewCache();
        var module = Compile(cache);
        Assert.False(module.FromDiskCache);
        Assert.Equal(1, cache.DamagedFiles);
        Assert.Equal(1, cache.Compilations);
        Assert.NotNull(CubinCacheFile.TryDeserialize(File.ReadAllBytes(file)));   // rewritten whole

        var output = zeros(8, device: CUDA);
        module.Kernel("fill<3>").Launch((1, 1, 1), (8, 1, 1), 0, output);
        Assert.Equal(3007f, output[7].item<float>());
    }

    [Fact]
    public void A_compile_error_carries_NVRTCs_log_line()
    {
        Gpu.Require();
        using var fx = new Fixture();
        var e = Assert.Throws<CudaCompileException>(() => fx.NewCache().Load(CUDA, TestKernels.Broken, ["broken"]));
        Assert.Matches(@"broken\.cu\([34]\): error", e.Message);
        Assert.Empty(Directory.GetFiles(fx.Folder.Path, "*.cubin"));
    }

    [Fact]
    public void Parallel_callers_share_one_compilation()
    {
        Gpu.Require();
        using var fx = new Fixture();
        var cache = fx.NewCache();
        var modules = Enumerable.Range(0, 8).AsParallel().WithDegreeOfParallelism(8).Select(_ => Compile(cache)).ToArray();
        Assert.Equal(1, cache.Compilations);
        Assert.All(modules, m => Assert.Same(modules[0], m));
    }

    [Fact]
    public void Dynamic_shared_memory_above_48_KB_is_opted_into()
    {
        Gpu.Require();
        using var fx = new Fixture();
        using var scope = NewDisposeScope();
        var kernel = Compile(fx.NewCache()).Kernel("shared_reverse");
        const int n = 24 * 1024;        // 96 KB of floats
        var input = randn(n, device: CUDA);
        var output = zeros(n, device: CUDA);
        kernel.Launch((1, 1, 1), (256, 1, 1), n * sizeof(float), output, input, n);
        Assert.True(output.eq(input.flip(0)).all().item<bool>());
        Assert.Throws<ArgumentException>(() => kernel.Launch((1, 1, 1), (256, 1, 1), kernel.Device.MaxSharedMemoryPerBlockOptin + 4, output, input, n));
    }

    [Fact]
    public void Bad_launches_are_refused_before_reaching_the_device()
    {
        Gpu.Require();
        using var fx = new Fixture();
        using var scope = NewDisposeScope();
        var axpy = Compile(fx.NewCache()).Kernel("axpy_f32");
        var y = zeros(64, device: CUDA);
        var x = ones(64, device: CUDA);
        Assert.Contains("tensor on cpu", Assert.Throws<ArgumentException>(() => axpy.Launch((1, 1, 1), (64, 1, 1), 0, y, x.cpu(), 1f, 64)).Message);
        Assert.Contains("not contiguous", Assert.Throws<ArgumentException>(() =>
            axpy.Launch((1, 1, 1), (64, 1, 1), 0, y, ones(8, 8, device: CUDA).t(), 1f, 64)).Message);
        Assert.Contains("String", Assert.Throws<ArgumentException>(() => axpy.Launch((1, 1, 1), (64, 1, 1), 0, y, x, "1", 64)).Message);
        Assert.Contains("threads", Assert.Throws<ArgumentException>(() => axpy.Launch((1, 1, 1), (4096, 1, 1), 0, y, x, 1f, 64)).Message);
        if (axpy.ParameterSizes is not null)
        {
            Assert.Contains("takes 4 parameters", Assert.Throws<ArgumentException>(() => axpy.Launch((1, 1, 1), (64, 1, 1), 0, y, x, 1f)).Message);
            Assert.Contains("parameter 2 is 4 bytes", Assert.Throws<ArgumentException>(() => axpy.Launch((1, 1, 1), (64, 1, 1), 0, y, x, 1.0, 64)).Message);
        }
        Assert.Equal(0f, y.abs().sum().item<float>());   // none of them ran
    }

    // the test module's spin kernel over every SM: a launcher taking the iterations, and the output it writes
    static (CudaDevice Device, Tensor Output, Action<int> Spin) Spinner(Fixture fx)
    {
        var kernel = Compile(fx.NewCache()).Kernel("spin");
        var device = kernel.Device;
        var output = zeros(device.MultiprocessorCount * 256, device: CUDA);
        return (device, output, iterations => kernel.Launch((device.MultiprocessorCount, 1, 1), (256, 1, 1), 0, output, iterations));
    }

    [Fact]
    public void Events_time_device_work()
    {
        Gpu.Require();
        using var fx = new Fixture();
        using var scope = NewDisposeScope();
        var (device, output, spin) = Spinner(fx);
        var ms = CudaEvent.Time(device, () => spin(100_000));
        Assert.True(ms > 0 && float.IsFinite(ms), $"{ms} ms");
        Assert.True(output.isfinite().all().item<bool>());
    }

    [Fact]
    public void Queued_timing_brackets_each_run_with_its_own_events()
    {
        Gpu.Require();
        using var fx = new Fixture();
        using var scope = NewDisposeScope();
        var (_, output, spin) = Spinner(fx);
        var order = new List<int>();
        // runs 0 and 2 spin 8 times as long as run 1: each sample must be its own run's
        var ms = DeviceTimer.For(CUDA).Queued(i =>
        {
            order.Add(i);
            spin(i == 1 ? 50_000 : 400_000);
        }, repeats: 3, flushBytes: 64L << 20);
        Assert.Equal([0, 1, 2], order);
        Assert.Equal(3, ms.Count);
        Assert.True(ms.All(x => x > 0 && double.IsFinite(x)), string.Join(", ", ms));
        Assert.True(ms[0] > 3 * ms[1] && ms[2] > 3 * ms[1], string.Join(", ", ms));
        Assert.True(output.isfinite().all().item<bool>());
    }

    [Fact]
    public void The_probe_finds_the_kernels_usable_and_reports_the_device()
    {
        Gpu.Require();
        Assert.Null(CudaKernels.UnavailableReason(CUDA));
        var device = CudaDevice.For(CUDA);
        Assert.True(device.ComputeMajor >= 7, device.ToString());
        Assert.True(device.MaxSharedMemoryPerBlockOptin >= 48 * 1024);
        Assert.Same(device, CudaDevice.For(new Device(DeviceType.CUDA, device.Ordinal)));
    }

    [Fact]
    public void Data_pointers_of_CUDA_views_include_their_offset()
    {
        Gpu.Require();
        using var scope = NewDisposeScope();
        var t = arange(100, dtype: ScalarType.BFloat16, device: CUDA);
        Assert.Equal(TensorMemory.DataPointer(t) + 10 * 2, TensorMemory.DataPointer(t.narrow(0, 10, 50)));
    }

    [Fact]
    public void The_custom_autograd_example_runs_on_CUDA()
    {
        Gpu.Require();
        using var scope = NewDisposeScope();
        var gen = new TorchSharp.torch.Generator(4);
        var x = randn([2, 40, 8], dtype: ScalarType.Float64, generator: gen);
        var g = -nn.functional.softplus(randn([2, 40], dtype: ScalarType.Float64, generator: gen));
        var h0 = randn([2, 8], dtype: ScalarType.Float64, generator: gen);
        var weight = randn([2, 40, 8], dtype: ScalarType.Float64, generator: gen);

        Tensor[] Gradients(Device device, bool custom)
        {
            var leaves = new[] { x, g, h0 }.Select(t => t.to(ScalarType.Float32, device).detach().requires_grad_()).ToArray();
            var (y, final) = custom ? DecayedScan.Forward(leaves[0], leaves[1], leaves[2], 0.9) : DecayedScan.Reference(leaves[0], leaves[1], leaves[2], 0.9);
            ((y * weight.to(ScalarType.Float32, device)).sum() + final.sum()).backward();
            return leaves.Select(l => l.grad!.cpu()).ToArray();
        }

        var onCuda = Gradients(CUDA, custom: true);
        var reference = Gradients(CPU, custom: false);
        for (int i = 0; i < 3; i++) Compare.Close(onCuda[i], reference[i], 1e-5, $"gradient {i} on CUDA");
    }

    [Fact]
    public void The_kernel_benchmark_times_with_CUDA_events()
    {
        Gpu.Require();
        var report = KernelBenchmark.Run(CUDA, [new BenchShape(1, 300, 2, 64)], ScalarType.BFloat16,
            new KernelBenchOptions { Warmup = 1, Repeats = 3, InputSets = 2 }, cancellation: TestContext.Current.CancellationToken);
        Assert.StartsWith("CUDA events", report.Timing);
        Assert.Equal("available", report.FusedKernels);
        Assert.Equal(3, report.Results.Count);
        Assert.All(report.Results, r =>
        {
            Assert.Null(r.Note);
            Assert.True(r.ForwardMs > 0 && r.ForwardBackwardMs > 0, $"{r.Op}: {r.ForwardMs} / {r.ForwardBackwardMs} ms");
            // queued timing also gives the host's time to issue a call
            Assert.True(r.ForwardHostMs > 0 && r.ForwardBackwardHostMs > 0, $"{r.Op}: host {r.ForwardHostMs} / {r.ForwardBackwardHostMs} ms");
        });
    }
}
