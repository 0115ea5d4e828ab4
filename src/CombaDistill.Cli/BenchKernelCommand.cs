using System.CommandLine;
using System.Globalization;
using CombaDistill.IO;
using CombaDistill.Ops;
using Spectre.Console;
using TorchSharp;

namespace CombaDistill.Cli;

/// <summary>
/// <c>combadistill bench kernel [--json FILE]</c>: the fused Comba op, the TorchSharp chunkwise op and causal SDPA,
/// forward and forward+backward, each against its roofline floor (FLOP and byte counts: docs/benchmarks.md).
/// </summary>
static class BenchKernelCommand
{
    public static Command Create()
    {
        var shapes = new Option<string[]>("--shape")
        {
            Description = "B,T,H,D (repeatable); default (8,2048,16,128) (1,8192,32,128) (2,16384,16,128) on CUDA, (4,2048,8,64) on CPU",
            AllowMultipleArgumentsPerToken = true,
        };
        var dtype = new Option<string?>("--dtype") { Description = "bfloat16 | float16 | float32 for q, k, v; default bfloat16 on CUDA, float32 on CPU" };
        var ops = new Option<string>("--ops") { Description = $"comma-separated, from {string.Join(", ", KernelBenchmark.Ops)}", DefaultValueFactory = _ => string.Join(",", KernelBenchmark.Ops) };
        var defaults = new KernelBenchOptions();
        var warmup = new Option<int>("--warmup") { Description = "untimed runs first", DefaultValueFactory = _ => defaults.Warmup };
        var repeats = new Option<int>("--repeats") { Description = "timed runs per measurement (the median is reported)", DefaultValueFactory = _ => defaults.Repeats };
        var inputSets = new Option<int>("--input-sets") { Description = "random input sets generated up front and rotated through", DefaultValueFactory = _ => defaults.InputSets };
        var chunk = new Option<int>("--chunk-size") { Description = "chunk size of the Comba ops: 16, 32, 64 or 128", DefaultValueFactory = _ => defaults.ChunkSize };
        var forwardOnly = new Option<bool>("--forward-only") { Description = "skip forward+backward" };
        var peakTflops = new Option<double>("--peak-tflops") { Description = "compute ceiling for the roofline (measured bf16 matmul on the H200)", DefaultValueFactory = _ => defaults.PeakTflops };
        var peakTBps = new Option<double>("--peak-tbps") { Description = "memory ceiling for the roofline (measured device copy on the H200)", DefaultValueFactory = _ => defaults.PeakTBps };

        var command = new Command("kernel", "Time the fused Comba kernels, the TorchSharp chunkwise op and causal SDPA against their roofline floors")
        {
            shapes, dtype, ops, warmup, repeats, inputSets, chunk, forwardOnly, peakTflops, peakTBps,
        };
        command.SetAction(CliCommon.Run((parse, ct) =>
        {
            var device = CliCommon.Start(parse);
            var onGpu = device.type == DeviceType.CUDA;
            var shapeList = parse.GetValue(shapes) is { Length: > 0 } given ? given.Select(BenchShape.Parse).ToArray()
                : onGpu ? CombaBenchmark.GpuShapes : CombaBenchmark.CpuShapes;
            var type = BenchCombaCommand.ParseDType(parse.GetValue(dtype) ?? (onGpu ? "bfloat16" : "float32"));
            if (!ChunkwiseComba.SupportedChunkSizes.Contains(parse.GetValue(chunk)))
                throw new ArgumentException($"--chunk-size {parse.GetValue(chunk)}: use one of {string.Join(", ", ChunkwiseComba.SupportedChunkSizes)}");
            var opList = parse.GetValue(ops)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            if (opList.Length == 0 || opList.Any(o => !KernelBenchmark.Ops.Contains(o)))
                throw new ArgumentException($"--ops {parse.GetValue(ops)}: expected a comma-separated list of {string.Join(", ", KernelBenchmark.Ops)}");
            if (parse.GetValue(BenchCommand.JsonOption) is { Length: > 0 } jsonPath && Path.GetDirectoryName(Path.GetFullPath(jsonPath)) is { } folder && !Directory.Exists(folder))
                throw new InvalidInputException(jsonPath, $"folder {folder} does not exist");   // before minutes of timing, not after
            var options = new KernelBenchOptions
            {
                Ops = opList, Warmup = parse.GetValue(warmup), Repeats = parse.GetValue(repeats), InputSets = parse.GetValue(inputSets),
                ChunkSize = parse.GetValue(chunk), Backward = !parse.GetValue(forwardOnly),
                PeakTflops = parse.GetValue(peakTflops), PeakTBps = parse.GetValue(peakTBps),
            };

            var progress = new Progress<string>(line => CliCommon.Err.MarkupLineInterpolated($"[grey]bench {line}[/]"));
            var report = KernelBenchmark.Run(device, shapeList, type, options, progress, ct);
            if (Console.IsOutputRedirected) AnsiConsole.Profile.Width = Math.Max(AnsiConsole.Profile.Width, 180);
            AnsiConsole.Write(Table(report));
            foreach (var r in report.Results.Where(r => r.Note is not null))
                AnsiConsole.MarkupLineInterpolated($"  {r.Shape} {r.Op}: {r.Note}");
            BenchCommand.WriteJson(parse, report);
            return 0;
        }));
        return command;
    }

    public static Table Table(KernelBenchReport report)
    {
        var table = new Table().Title($"Comba kernels vs SDPA, {report.Dtype} on {report.Device}; fused kernels {report.FusedKernels}");
        table.Caption($"median of {report.Repeats} after {report.Warmup} warm-up, {report.Timing}; floor = max(FLOPs / {report.PeakTflops:G4} TFLOP/s, bytes / {report.PeakTBps:G4} TB/s); ×SDPA = time / SDPA's");
        table.AddColumn("shape (B,T,H,D)").AddColumn("op");
        foreach (var column in new[] { "fwd ms", "TFLOP/s", "TB/s", "×floor", "×SDPA", "fwd+bwd ms", "TFLOP/s", "TB/s", "×floor", "×SDPA" })
            table.AddColumn(new TableColumn(column) { Alignment = Justify.Right });
        foreach (var r in report.Results)
            table.AddRow(r.Shape.ToString(), r.Op + (r.Note is null ? "" : " *"),
                Ms(r.ForwardMs), Number(r.ForwardTflops), Number(r.ForwardTBps), Number(r.ForwardTimesFloor), Number(r.ForwardTimeRatioToSdpa),
                Ms(r.ForwardBackwardMs), Number(r.ForwardBackwardTflops), Number(r.ForwardBackwardTBps), Number(r.ForwardBackwardTimesFloor), Number(r.ForwardBackwardTimeRatioToSdpa));
        return table;
    }

    static string Ms(double? ms) => ms is { } v ? v.ToString(v < 10 ? "F3" : "F1", CultureInfo.InvariantCulture) : "—";
    static string Number(double? x) => x is { } v ? v.ToString(v < 10 ? "F2" : "F1", CultureInfo.InvariantCulture) : "—";
}
