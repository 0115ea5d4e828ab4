using CombaDistill.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Ops;

/// <summary>One benchmark problem, (B, T, H, D), all heads full width (no GQA).</summary>
public sealed record BenchShape(int Batch, int Length, int Heads, int HeadDim)
{
    public long Tokens => (long)Batch * Length;
    public override string ToString() => $"({Batch},{Length},{Heads},{HeadDim})";

    /// <summary>Parses "B,T,H,D".</summary>
    public static BenchShape Parse(string text)
    {
        var parts = text.Trim().Trim('(', ')').Split(',', StringSplitOptions.TrimEntries);
        if (parts.Length != 4 || !parts.All(p => int.TryParse(p, out var n) && n > 0))
            throw new ArgumentException($"shape '{text}': expected four positive integers B,T,H,D");
        var n = parts.Select(int.Parse).ToArray();
        return new BenchShape(n[0], n[1], n[2], n[3]);
    }
}

public sealed record CombaBenchOptions
{
    public int Warmup { get; init; } = 1;
    public int Repeats { get; init; } = 3;
    public int ChunkSize { get; init; } = 64;
    /// <summary>
    /// Naive's backward keeps a few Dk × Dk matrices per token and head (≈ 6·B·H·T·D²·4 bytes as measured); above this
    /// estimate its forward+backward is skipped (its forward, under no_grad, needs no such memory and always runs).
    /// </summary>
    public long NaiveBackwardMaxBytes { get; init; } = 32L << 30;
}

/// <summary>
/// Median milliseconds of one method on one shape. Forward is timed under no_grad (inference); forward+backward
/// with gradients for q, k, v. Ratios are this method's time over scaled_dot_product_attention's from the same run
/// (above 1: slower than the teacher's attention). Null times: skipped or failed, with the reason in Note.
/// </summary>
public sealed record CombaBenchResult(
    BenchShape Shape, string Method, string Dtype, string Device,
    double? ForwardMs, double? ForwardBackwardMs,
    double? ForwardTokensPerSecond, double? ForwardBackwardTokensPerSecond,
    double? ForwardTimeRatioToSdpa, double? ForwardBackwardTimeRatioToSdpa,
    string? Note = null);

/// <summary>
/// Random inputs of one benchmark shape, as CombaAttention makes them: q, k, v in the benchmark's dtype (the ones
/// that get gradients when <c>requiresGrad</c>), gates in float32 with mostly mild decay, per-head λ and d, and a
/// gradient for the output. Never zeros: all-zero inputs would flatter kernels that skip work.
/// </summary>
public sealed record CombaBenchInputs(Tensor Q, Tensor K, Tensor V, Tensor G, Tensor Beta, Tensor Lambda, Tensor D, Tensor GradOut) : IDisposable
{
    /// <param name="requiresGrad">q, k, v require gradients</param>
    /// <param name="gatesRequireGrad">g, β, λ and d do too (a training step differentiates them all)</param>
    public static CombaBenchInputs Random(BenchShape shape, ScalarType dtype, Device device, bool requiresGrad, bool gatesRequireGrad = false) =>
        Random(shape.Batch, shape.Heads, shape.Heads, shape.Length, shape.HeadDim, shape.HeadDim, dtype, device, requiresGrad, gatesRequireGrad);

    /// <summary>The general form: <paramref name="kvHeads"/> heads for k and v (GQA), key and value widths apart (Taylor features, normalised read-out), d filled with <paramref name="initialD"/> when given.</summary>
    public static CombaBenchInputs Random(long batch, long heads, long kvHeads, long length, long keyDim, long valueDim, ScalarType dtype, Device device,
        bool requiresGrad, bool gatesRequireGrad = false, double? initialD = null)
    {
        var gates = requiresGrad && gatesRequireGrad;
        return new CombaBenchInputs(
            randn([batch, heads, length, keyDim], dtype: dtype, device: device).requires_grad_(requiresGrad),
            randn([batch, kvHeads, length, keyDim], dtype: dtype, device: device).requires_grad_(requiresGrad),
            randn([batch, kvHeads, length, valueDim], dtype: dtype, device: device).requires_grad_(requiresGrad),
            (-nn.functional.softplus(randn([batch, heads, length], device: device) - 3)).requires_grad_(gates),
            rand([batch, heads, length], device: device).requires_grad_(gates),
            (0.25 + 0.5 * rand([heads], device: device)).requires_grad_(gates),
            (initialD is { } d0 ? full([heads], d0, device: device) : 0.02 + 0.01 * randn([heads], device: device)).requires_grad_(gates),
            randn([batch, heads, length, valueDim], dtype: dtype, device: device));
    }

    public IEnumerable<Tensor> All => [Q, K, V, G, Beta, Lambda, D, GradOut];

    public void Dispose()
    {
        foreach (var t in All) t.Dispose();
    }
}

/// <summary>Chunkwise and Naive Comba against the teacher's causal scaled_dot_product_attention.</summary>
public static class CombaBenchmark
{
    public static readonly BenchShape[] CpuShapes = [new(4, 2048, 8, 64)];
    public static readonly BenchShape[] GpuShapes = [new(8, 2048, 16, 128), new(1, 8192, 32, 128), new(2, 16384, 16, 128)];
    public static readonly string[] Methods = ["sdpa", "chunkwise", "naive"];

    public static IReadOnlyList<CombaBenchResult> Run(
        Device device, IEnumerable<BenchShape> shapes, ScalarType dtype, CombaBenchOptions? options = null,
        IProgress<string>? progress = null, CancellationToken cancellation = default)
    {
        options ??= new CombaBenchOptions();
        var results = new List<CombaBenchResult>();
        foreach (var shape in shapes)
        {
            var timings = new Dictionary<string, (double? Forward, double? Both, string? Note)>();
            foreach (var method in Methods)
            {
                cancellation.ThrowIfCancellationRequested();
                progress?.Report($"{shape} {method} {dtype} on {device}");
                double? forward = null, both = null;
                string? note = null;
                try
                {
                    forward = Time(method, shape, dtype, device, options, backward: false, cancellation);
                    var naiveBytes = 6.0 * shape.Tokens * shape.Heads * shape.HeadDim * shape.HeadDim * 4;
                    if (method == "naive" && naiveBytes > options.NaiveBackwardMaxBytes)
                        note = $"forward+backward skipped: it would keep ~{naiveBytes / (1L << 30):F0} GiB of per-step matrices (limit {options.NaiveBackwardMaxBytes / (double)(1L << 30):F0} GiB)";
                    else
                        both = Time(method, shape, dtype, device, options, backward: true, cancellation);
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    note = "failed: " + e.Message.Split('\n')[0];
                }
                timings[method] = (forward, both, note);
            }
            var (sdpaForward, sdpaBoth, _) = timings["sdpa"];
            foreach (var method in Methods)
            {
                var (forward, both, note) = timings[method];
                results.Add(new CombaBenchResult(shape, method, dtype.ToString(), device.ToString(), forward, both,
                    forward is { } f ? shape.Tokens / (f / 1000) : null, both is { } b ? shape.Tokens / (b / 1000) : null,
                    forward / sdpaForward, both / sdpaBoth, note));
            }
        }
        return results;
    }

    static readonly BenchColumn[] Columns =
    [
        new("shape", "shape (B,T,H,D)", BenchUnit.Text), new("method", "method", BenchUnit.Text),
        new("forwardMs", "fwd ms", BenchUnit.Milliseconds), new("forwardTokensPerSecond", "fwd tok/s", BenchUnit.PerSecond),
        new("forwardTimeRatioToSdpa", "fwd ×SDPA", BenchUnit.Ratio),
        new("forwardBackwardMs", "fwd+bwd ms", BenchUnit.Milliseconds), new("forwardBackwardTokensPerSecond", "fwd+bwd tok/s", BenchUnit.PerSecond),
        new("forwardBackwardTimeRatioToSdpa", "fwd+bwd ×SDPA", BenchUnit.Ratio),
        new("note", "note", BenchUnit.Text, InTable: false),
    ];

    /// <summary>The results of <see cref="Run"/> in the one result shape of every <c>bench</c> command.</summary>
    public static BenchReport ToReport(IReadOnlyList<CombaBenchResult> results, Device device, ScalarType dtype, CombaBenchOptions? options = null)
    {
        options ??= new CombaBenchOptions();
        return new BenchReport
        {
            Benchmark = "comba",
            Title = $"Comba vs SDPA, {dtype} on {device}; ×SDPA = time / SDPA's time",
            Device = device.ToString(),
            Timing = DeviceTimer.For(device).Description,
            Settings = new Dictionary<string, object?>
            {
                ["dtype"] = dtype.ToString(), ["warmup"] = options.Warmup, ["repeats"] = options.Repeats, ["chunkSize"] = options.ChunkSize,
                ["naiveBackwardMaxBytes"] = options.NaiveBackwardMaxBytes,
            },
            Columns = Columns,
            Rows = results.Select(r => (IReadOnlyDictionary<string, object?>)new Dictionary<string, object?>
            {
                ["shape"] = r.Shape.ToString(), ["method"] = r.Method,
                ["forwardMs"] = r.ForwardMs, ["forwardTokensPerSecond"] = r.ForwardTokensPerSecond, ["forwardTimeRatioToSdpa"] = r.ForwardTimeRatioToSdpa,
                ["forwardBackwardMs"] = r.ForwardBackwardMs, ["forwardBackwardTokensPerSecond"] = r.ForwardBackwardTokensPerSecond,
                ["forwardBackwardTimeRatioToSdpa"] = r.ForwardBackwardTimeRatioToSdpa, ["note"] = r.Note,
            }).ToList(),
            Notes = [$"median of {options.Repeats} after {options.Warmup} warm-up", .. results.Where(r => r.Note is not null).Select(r => $"{r.Shape} {r.Method}: {r.Note}")],
        }.Checked();
    }

    static double Time(string method, BenchShape shape, ScalarType dtype, Device device, CombaBenchOptions options, bool backward, CancellationToken cancellation)
    {
        using var scope = NewDisposeScope();
        var (q, k, v, g, beta, lambda, d, gradOut) = CombaBenchInputs.Random(shape, dtype, device, requiresGrad: backward);

        Tensor Forward() => method switch
        {
            "sdpa" => nn.functional.scaled_dot_product_attention(q, k, v, is_casual: true),
            "chunkwise" => ChunkwiseComba.Forward(q, k, v, g, beta, lambda, d, 1.0, chunkSize: options.ChunkSize).Output,
            "naive" => NaiveComba.Forward(q, k, v, g, beta, lambda, d, 1.0).Output,
            _ => throw new ArgumentException($"unknown method '{method}'"),
        };

        void Once()
        {
            using var inner = NewDisposeScope();
            if (backward)
            {
                Forward().backward([gradOut]);
                foreach (var t in new[] { q, k, v }) t.grad?.zero_();
            }
            else
            {
                using var _ = no_grad();
                Forward();
            }
        }

        return DeviceTimer.For(device).Median(Once, options.Warmup, options.Repeats, cancellation);
    }
}
