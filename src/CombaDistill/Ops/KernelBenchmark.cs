using CombaDistill.Runtime;
using CombaDistill.Runtime.Cuda;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Ops;

/// <summary>Floating-point operations and minimal memory traffic of one call.</summary>
public readonly record struct Work(double Flops, double Bytes)
{
    /// <summary>The roofline floor: the call can be no faster than its FLOPs at peak compute or its bytes at peak bandwidth.</summary>
    public double FloorMs(double peakTflops, double peakTBps) => 1000 * Math.Max(Flops / (peakTflops * 1e12), Bytes / (peakTBps * 1e12));
}

/// <summary>
/// The counts behind <c>bench kernel</c>'s roofline (docs/benchmarks.md explains each). Per head and chunk of C tokens
/// (N = ⌈T/C⌉ chunks, the padded tail included, as a chunked kernel computes it), the chunkwise form of docs/architecture.md has
/// five C-by-C-sized products, three against the D-by-D state, and one triangular inverse:
/// <code>
///   K̂K̂ᵀ, Q̃K̂ᵀ               2·C²·Dk each
///   M·(βV), ((Q̃K̂ᵀ)⊙…)·Ũ      2·C²·Dv each
///   W = M·(β e^{γ⁰} λ K̂)      2·C²·Dk
///   W·h, K̃ᵀ·Ũ, Q̃·h           2·C·Dk·Dv each
///   M = (I + A)⁻¹             C³/3 (a unit lower-triangular inverse)
/// </code>
/// Element-wise work (decays, masks, gating) is left out: it is O(C²) per chunk against the products' O(C²·D).
/// Backward is counted as twice the forward (every product Y = A·B needs dA and dB), so forward+backward is 3× the
/// forward; recomputation a kernel chooses over storing is not counted, so achieved rates are of useful work.
/// Causal attention: QKᵀ and PV over the lower triangle, 2·T²·D per head forward, backward 2.5× the forward
/// (FlashAttention's five products: P recomputed, dV, dP, dQ, dK).
/// Bytes are the minimum: every input read once and every output written once per pass; backward reads the inputs
/// and the output's gradient again and writes one gradient per differentiable input.
/// </summary>
public static class KernelWork
{
    public static Work CombaForward(BenchShape s, int chunk, int inputBytes, int gateBytes = 4, int stateBytes = 4)
    {
        double c = chunk, dk = s.HeadDim, dv = s.HeadDim;
        double chunks = Math.Ceiling((double)s.Length / chunk), heads = (double)s.Batch * s.Heads;
        var perChunk = 2 * c * c * (3 * dk + 2 * dv) + 3 * 2 * c * dk * dv + c * c * c / 3;
        return new Work(heads * chunks * perChunk, CombaInputBytes(s, inputBytes, gateBytes) + CombaOutputBytes(s, inputBytes, stateBytes));
    }

    public static Work CombaForwardBackward(BenchShape s, int chunk, int inputBytes, int gateBytes = 4, int stateBytes = 4)
    {
        var forward = CombaForward(s, chunk, inputBytes, gateBytes, stateBytes);
        var inputs = CombaInputBytes(s, inputBytes, gateBytes);
        var outputGradient = (double)s.Batch * s.Heads * s.Length * s.HeadDim * inputBytes;
        // backward: inputs again, dO, and one gradient per input (the same size as the inputs)
        return new Work(3 * forward.Flops, forward.Bytes + inputs + outputGradient + inputs);
    }

    /// <summary>q, k, v (B·H·T·D each), g and β (B·H·T each), λ and d (H each).</summary>
    static double CombaInputBytes(BenchShape s, int inputBytes, int gateBytes)
    {
        double tokens = (double)s.Batch * s.Heads * s.Length;
        return 3 * tokens * s.HeadDim * inputBytes + 2 * tokens * gateBytes + 2.0 * s.Heads * gateBytes;
    }

    /// <summary>o (B·H·T·Dv) and the final state (B·H·Dk·Dv).</summary>
    static double CombaOutputBytes(BenchShape s, int inputBytes, int stateBytes) =>
        (double)s.Batch * s.Heads * s.Length * s.HeadDim * inputBytes + (double)s.Batch * s.Heads * s.HeadDim * s.HeadDim * stateBytes;

    public static Work SdpaForward(BenchShape s, int elementBytes)
    {
        double heads = (double)s.Batch * s.Heads, t = s.Length, d = s.HeadDim;
        return new Work(heads * 2 * t * t * d, 4 * heads * t * d * elementBytes);   // q, k, v in; o out
    }

    public static Work SdpaForwardBackward(BenchShape s, int elementBytes)
    {
        var forward = SdpaForward(s, elementBytes);
        double tensor = (double)s.Batch * s.Heads * s.Length * s.HeadDim * elementBytes;
        // backward: q, k, v, o and dO in; dq, dk, dv out
        return new Work(3.5 * forward.Flops, forward.Bytes + 8 * tensor);
    }
}

public sealed record KernelBenchOptions
{
    public int Warmup { get; init; } = 3;
    public int Repeats { get; init; } = 10;
    /// <summary>Input sets generated up front and rotated through, so repeats do not re-read one set from cache.</summary>
    public int InputSets { get; init; } = 3;
    public int ChunkSize { get; init; } = 64;
    public IReadOnlyList<string> Ops { get; init; } = KernelBenchmark.Ops;
    public bool Backward { get; init; } = true;
    /// <summary>
    /// Repeats queued back to back with an L2 flush before each, as triton's do_bench times the peers
    /// (<see cref="DeviceTimer.Queued"/>); false synchronises before and after every repeat, so the host's launch time
    /// before the first kernel counts too.
    /// </summary>
    public bool Queued { get; init; } = true;
    /// <summary>The H200's measured bf16 matmul rate (docs/gpu: ~785–790 TFLOP/s on 8192³).</summary>
    public double PeakTflops { get; init; } = 790;
    /// <summary>The H200's measured device-to-device copy rate.</summary>
    public double PeakTBps { get; init; } = 4.3;
    /// <summary>
    /// Whether ×floor is reported. The default peaks are a GPU's, so against a CPU's times they would say nothing; a
    /// caller that passes its device's own peaks turns it back on.
    /// </summary>
    public bool Roofline { get; init; } = true;
}

/// <summary>
/// One op on one shape. Times are medians in ms; rates are the counted <see cref="Work"/> over the median time;
/// ×floor is the time over the roofline floor (1 would be perfect); ×SDPA is the time over SDPA's in the same run.
/// </summary>
public sealed record KernelBenchResult(
    BenchShape Shape, string Op,
    double? ForwardMs, double? ForwardBackwardMs,
    double ForwardFlops, double ForwardBytes, double ForwardBackwardFlops, double ForwardBackwardBytes,
    double? ForwardTflops, double? ForwardTBps, double? ForwardBackwardTflops, double? ForwardBackwardTBps,
    double ForwardFloorMs, double ForwardBackwardFloorMs,
    double? ForwardTimesFloor, double? ForwardBackwardTimesFloor,
    double? ForwardTimeRatioToSdpa, double? ForwardBackwardTimeRatioToSdpa,
    string? Note = null, double? ForwardHostMs = null, double? ForwardBackwardHostMs = null);

/// <summary>A whole run: where and how it was measured, then every result.</summary>
public sealed record KernelBenchReport(
    string Device, string Dtype, string Timing, double PeakTflops, double PeakTBps,
    int Warmup, int Repeats, int InputSets, int ChunkSize,
    string FusedKernels, IReadOnlyList<KernelBenchResult> Results, bool Roofline = true)
{
    static readonly BenchColumn[] Columns =
    [
        new("shape", "shape (B,T,H,D)", BenchUnit.Text), new("op", "op", BenchUnit.Text),
        new("forwardMs", "fwd ms", BenchUnit.Milliseconds), new("forwardTflops", "TFLOP/s", BenchUnit.Teraflops),
        new("forwardTBps", "TB/s", BenchUnit.TerabytesPerSecond), new("forwardTimesFloor", "×floor", BenchUnit.Ratio),
        new("forwardTimeRatioToSdpa", "×SDPA", BenchUnit.Ratio),
        new("forwardBackwardMs", "fwd+bwd ms", BenchUnit.Milliseconds), new("forwardBackwardTflops", "TFLOP/s", BenchUnit.Teraflops),
        new("forwardBackwardTBps", "TB/s", BenchUnit.TerabytesPerSecond), new("forwardBackwardTimesFloor", "×floor", BenchUnit.Ratio),
        new("forwardBackwardTimeRatioToSdpa", "×SDPA", BenchUnit.Ratio),
        new("forwardHostMs", "fwd host ms", BenchUnit.Milliseconds), new("forwardBackwardHostMs", "fwd+bwd host ms", BenchUnit.Milliseconds),
        new("forwardFlops", "fwd FLOPs", BenchUnit.Flops, InTable: false), new("forwardBytes", "fwd bytes", BenchUnit.Bytes, InTable: false),
        new("forwardBackwardFlops", "fwd+bwd FLOPs", BenchUnit.Flops, InTable: false), new("forwardBackwardBytes", "fwd+bwd bytes", BenchUnit.Bytes, InTable: false),
        new("forwardFloorMs", "fwd floor ms", BenchUnit.Milliseconds, InTable: false), new("forwardBackwardFloorMs", "fwd+bwd floor ms", BenchUnit.Milliseconds, InTable: false),
        new("note", "note", BenchUnit.Text, InTable: false),
    ];

    /// <summary>The one result shape of every <c>bench</c> command.</summary>
    public BenchReport ToReport() => new BenchReport
    {
        Benchmark = "kernel",
        Title = $"Comba kernels vs SDPA, {Dtype} on {Device}; fused kernels {FusedKernels}",
        Device = Device,
        Timing = Timing,
        Settings = new Dictionary<string, object?>
        {
            ["dtype"] = Dtype, ["warmup"] = Warmup, ["repeats"] = Repeats, ["inputSets"] = InputSets, ["chunkSize"] = ChunkSize,
            ["peakTflops"] = PeakTflops, ["peakTBps"] = PeakTBps, ["fusedKernels"] = FusedKernels,
        },
        Columns = Columns,
        Rows = Results.Select(r => (IReadOnlyDictionary<string, object?>)new Dictionary<string, object?>
        {
            ["shape"] = r.Shape.ToString(), ["op"] = r.Op,
            ["forwardMs"] = r.ForwardMs, ["forwardTflops"] = r.ForwardTflops, ["forwardTBps"] = r.ForwardTBps,
            ["forwardTimesFloor"] = r.ForwardTimesFloor, ["forwardTimeRatioToSdpa"] = r.ForwardTimeRatioToSdpa,
            ["forwardBackwardMs"] = r.ForwardBackwardMs, ["forwardBackwardTflops"] = r.ForwardBackwardTflops, ["forwardBackwardTBps"] = r.ForwardBackwardTBps,
            ["forwardBackwardTimesFloor"] = r.ForwardBackwardTimesFloor, ["forwardBackwardTimeRatioToSdpa"] = r.ForwardBackwardTimeRatioToSdpa,
            ["forwardFlops"] = r.ForwardFlops, ["forwardBytes"] = r.ForwardBytes,
            ["forwardBackwardFlops"] = r.ForwardBackwardFlops, ["forwardBackwardBytes"] = r.ForwardBackwardBytes,
            ["forwardFloorMs"] = r.ForwardFloorMs, ["forwardBackwardFloorMs"] = r.ForwardBackwardFloorMs, ["note"] = r.Note,
            ["forwardHostMs"] = r.ForwardHostMs, ["forwardBackwardHostMs"] = r.ForwardBackwardHostMs,
        }).ToList(),
        Notes = [
            $"median of {Repeats} after {Warmup} warm-up; " + (Roofline
                ? $"floor = max(FLOPs / {PeakTflops:G4} TFLOP/s, bytes / {PeakTBps:G4} TB/s)"
                : "no ×floor: the default peaks are a GPU's (give this device's own with --peak-tflops and --peak-tbps)") + "; ×SDPA = time / SDPA's",
            "host ms (queued CUDA timing only): the host's wall time to issue one call, the mean over the queued repeats; where it nears the device time, the op is bound by its launches, not its kernels",
            .. Results.Where(r => r.Note is not null).Select(r => $"{r.Shape} {r.Op}: {r.Note}"),
        ],
    }.Checked();
}

/// <summary>
/// <c>bench kernel</c>: the fused Comba op, the TorchSharp chunkwise op and causal SDPA on the same shapes in one
/// run, forward (under no_grad) and forward+backward (gradients for q, k, v, and for g, β, λ, d in the Comba ops,
/// as in training). Each measurement is the median over repeats, after warm-up, each repeat on the next of a few
/// pre-generated random input sets. On CUDA the time is between two CUDA events on the stream the ops run on;
/// elsewhere it is wall time.
/// </summary>
public static class KernelBenchmark
{
    public static readonly string[] Ops = ["fused", "chunkwise", "sdpa"];

    public static KernelBenchReport Run(Device device, IEnumerable<BenchShape> shapes, ScalarType dtype, KernelBenchOptions? options = null,
        IProgress<string>? progress = null, CancellationToken cancellation = default)
    {
        options ??= new KernelBenchOptions();
        if (options.Ops.FirstOrDefault(op => !Ops.Contains(op)) is { } unknown)
            throw new ArgumentException($"unknown op '{unknown}'; expected some of {string.Join(", ", Ops)}");
        if (options.Repeats < 1 || options.Warmup < 0 || options.InputSets < 1)
            throw new ArgumentException($"repeats ({options.Repeats}) and input sets ({options.InputSets}) must be positive, warm-up ({options.Warmup}) not negative");
        if (!(options.PeakTflops > 0) || !(options.PeakTBps > 0))
            throw new ArgumentException($"peak rates must be positive (got {options.PeakTflops} TFLOP/s, {options.PeakTBps} TB/s)");

        var timer = DeviceTimer.For(device);
        var timing = !timer.UsesEvents ? timer.Description
            : options.Queued ? timer.Description + ", repeats queued back to back, each after a 256 MB L2 flush (as triton's do_bench)"
            : timer.Description + ", synchronised before and after each repeat";
        var fused = CudaKernels.UnavailableReason(device) is { } reason ? $"unavailable ({reason}); FusedComba falls back" : "available";
        var elementBytes = (int)empty(0, dtype: dtype).element_size();
        var results = new List<KernelBenchResult>();
        foreach (var shape in shapes)
        {
            var measured = new Dictionary<string, (Timed? Forward, Timed? Both, string? Note)>();
            foreach (var op in options.Ops)
            {
                cancellation.ThrowIfCancellationRequested();
                progress?.Report($"{shape} {op} {dtype} on {device}");
                measured[op] = Measure(op, shape, dtype, device, options, timer, cancellation);
            }
            var sdpa = measured.GetValueOrDefault("sdpa");
            foreach (var op in options.Ops)
            {
                var (forwardTimed, bothTimed, note) = measured[op];
                var (forward, both) = (forwardTimed?.DeviceMs, bothTimed?.DeviceMs);
                var (w1, w2) = op == "sdpa"
                    ? (KernelWork.SdpaForward(shape, elementBytes), KernelWork.SdpaForwardBackward(shape, elementBytes))
                    : (KernelWork.CombaForward(shape, options.ChunkSize, elementBytes), KernelWork.CombaForwardBackward(shape, options.ChunkSize, elementBytes));
                var (floor1, floor2) = (w1.FloorMs(options.PeakTflops, options.PeakTBps), w2.FloorMs(options.PeakTflops, options.PeakTBps));
                results.Add(new KernelBenchResult(shape, op, forward, both,
                    w1.Flops, w1.Bytes, w2.Flops, w2.Bytes,
                    Rate(w1.Flops, forward), Rate(w1.Bytes, forward), Rate(w2.Flops, both), Rate(w2.Bytes, both),
                    floor1, floor2, options.Roofline ? forward / floor1 : null, options.Roofline ? both / floor2 : null,
                    forward / sdpa.Forward?.DeviceMs, both / sdpa.Both?.DeviceMs, note, forwardTimed?.HostMs, bothTimed?.HostMs));
            }
        }
        return new KernelBenchReport(CudaDevice.Describe(device), dtype.ToString(), timing, options.PeakTflops, options.PeakTBps,
            options.Warmup, options.Repeats, options.InputSets, options.ChunkSize, fused, results, options.Roofline);
    }

    /// <summary>Units of 10¹² per second (TFLOP/s for FLOPs, TB/s for bytes).</summary>
    static double? Rate(double amount, double? ms) => ms is { } t ? amount / (t / 1000) / 1e12 : null;

    /// <summary>One measurement: the device's median time, and the host's mean time to issue a call where it was measured.</summary>
    readonly record struct Timed(double DeviceMs, double? HostMs);

    static (Timed? Forward, Timed? Both, string? Note) Measure(string op, BenchShape shape, ScalarType dtype, Device device,
        KernelBenchOptions options, DeviceTimer timer, CancellationToken cancellation)
    {
        Timed? forward = null, both = null;
        try
        {
            forward = Time(op, shape, dtype, device, options, timer, backward: false, cancellation);
            if (options.Backward) both = Time(op, shape, dtype, device, options, timer, backward: true, cancellation);
            return (forward, both, null);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            return (forward, both, "failed: " + e.Message.Split('\n')[0]);
        }
    }

    static Timed Time(string op, BenchShape shape, ScalarType dtype, Device device, KernelBenchOptions options, DeviceTimer timer,
        bool backward, CancellationToken cancellation)
    {
        using var scope = NewDisposeScope();
        var sets = Enumerable.Range(0, options.InputSets)
            .Select(_ => CombaBenchInputs.Random(shape, dtype, device, requiresGrad: backward, gatesRequireGrad: op != "sdpa"))
            .ToArray();
        var scale = 1.0;

        Tensor Forward(CombaBenchInputs x) => op switch
        {
            "fused" => FusedComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, scale, chunkSize: options.ChunkSize).Output,
            "chunkwise" => ChunkwiseComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, scale, chunkSize: options.ChunkSize).Output,
            "sdpa" => nn.functional.scaled_dot_product_attention(x.Q, x.K, x.V, is_casual: true),
            _ => throw new ArgumentException($"unknown op '{op}'"),
        };

        // one call, with its gradients cleared after (so nothing accumulates); its tensors freed as it ends
        void Run(CombaBenchInputs x)
        {
            using var inner = NewDisposeScope();
            if (backward)
            {
                Forward(x).backward([x.GradOut]);
                foreach (var t in x.All.Where(t => t.requires_grad)) t.grad = null;
            }
            else
            {
                using var _ = no_grad();
                Forward(x);
            }
        }

        // synchronised before and after (clearing the gradients is host work: it adds nothing to the device's time)
        double Once(CombaBenchInputs x) => timer.Measure(() => Run(x));

        for (int i = 0; i < options.Warmup; i++) Once(sets[i % sets.Length]);
        if (options.Queued)
        {
            // the host's time inside the calls alone: the queue of launches is deep enough that issuing never waits
            // on the device here (nothing in a call synchronises)
            var host = new System.Diagnostics.Stopwatch();
            var onDevice = Statistics.Median(timer.Queued(i =>
            {
                cancellation.ThrowIfCancellationRequested();
                host.Start();
                Run(sets[(options.Warmup + i) % sets.Length]);
                host.Stop();
            }, options.Repeats));
            return new Timed(onDevice, timer.UsesEvents ? host.Elapsed.TotalMilliseconds / options.Repeats : null);
        }
        var samples = new List<double>();
        for (int i = 0; i < options.Repeats; i++)
        {
            cancellation.ThrowIfCancellationRequested();
            samples.Add(Once(sets[(options.Warmup + i) % sets.Length]));
        }
        return new Timed(Statistics.Median(samples), null);
    }
}
