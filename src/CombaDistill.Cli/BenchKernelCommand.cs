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
        var dtype = CliCommon.DTypeOption("for q, k, v; default bfloat16 on CUDA, float32 on CPU", torch.ScalarType.BFloat16, torch.ScalarType.Float16, torch.ScalarType.Float32);
        var ops = new Option<string>("--ops") { Description = $"comma-separated, from {string.Join(", ", KernelBenchmark.Ops)}", DefaultValueFactory = _ => string.Join(",", KernelBenchmark.Ops) };
        var defaults = new KernelBenchOptions();
        var warmup = new Option<int>("--warmup") { Description = "untimed runs first", DefaultValueFactory = _ => defaults.Warmup };
        var repeats = new Option<int>("--repeats") { Description = "timed runs per measurement (the median is reported)", DefaultValueFactory = _ => defaults.Repeats };
        var inputSets = new Option<int>("--input-sets") { Description = "random input sets generated up front and rotated through", DefaultValueFactory = _ => defaults.InputSets };
        var chunk = new Option<int>("--chunk-size") { Description = "chunk size of the Comba ops: 16, 32, 64 or 128", DefaultValueFactory = _ => defaults.ChunkSize };
        var forwardOnly = new Option<bool>("--forward-only") { Description = "skip forward+backward" };
        var synchronized = new Option<bool>("--synchronized")
        {
            Description = "synchronise before and after each repeat (the host's launch time counts); by default repeats are queued back to back after an L2 flush, as the peers' do_bench times them",
        };
        var peakTflops = new Option<double>("--peak-tflops") { Description = "compute ceiling for the roofline (measured bf16 matmul on the H200)", DefaultValueFactory = _ => defaults.PeakTflops };
        var peakTBps = new Option<double>("--peak-tbps") { Description = "memory ceiling for the roofline (measured device copy on the H200)", DefaultValueFactory = _ => defaults.PeakTBps };

        var threads = CliCommon.ThreadsOption();
        var command = new Command("kernel", "Time the fused Comba kernels, the TorchSharp chunkwise op and causal SDPA against their roofline floors")
        {
            shapes, dtype, ops, warmup, repeats, inputSets, chunk, forwardOnly, synchronized, peakTflops, peakTBps, threads,
        };
        command.SetAction(CliCommon.Run((parse, ct) =>
        {
            var device = CliCommon.Start(parse);
            CliCommon.SetThreads(parse.GetValue(threads));
            var onGpu = device.type == DeviceType.CUDA;
            var shapeList = parse.GetValue(shapes) is { Length: > 0 } given ? given.Select(BenchShape.Parse).ToArray()
                : onGpu ? CombaBenchmark.GpuShapes : CombaBenchmark.CpuShapes;
            var type = parse.GetValue(dtype) ?? (onGpu ? torch.ScalarType.BFloat16 : torch.ScalarType.Float32);
            if (!ChunkwiseComba.SupportedChunkSizes.Contains(parse.GetValue(chunk)))
                throw new ArgumentException($"--chunk-size {parse.GetValue(chunk)}: use one of {string.Join(", ", ChunkwiseComba.SupportedChunkSizes)}");
            var opList = parse.GetValue(ops)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            if (opList.Length == 0 || opList.Any(o => !KernelBenchmark.Ops.Contains(o)))
                throw new ArgumentException($"--ops {parse.GetValue(ops)}: expected a comma-separated list of {string.Join(", ", KernelBenchmark.Ops)}");
            BenchCommand.CheckJsonTarget(parse);
            var options = new KernelBenchOptions
            {
                Ops = opList, Warmup = parse.GetValue(warmup), Repeats = parse.GetValue(repeats), InputSets = parse.GetValue(inputSets),
                ChunkSize = parse.GetValue(chunk), Backward = !parse.GetValue(forwardOnly), Queued = !parse.GetValue(synchronized),
                PeakTflops = parse.GetValue(peakTflops), PeakTBps = parse.GetValue(peakTBps),
                // the default peaks are an H200's: a roofline off the GPU needs that device's own
                Roofline = onGpu || (parse.GetResult(peakTflops) is { Implicit: false } && parse.GetResult(peakTBps) is { Implicit: false }),
            };

            var progress = new Progress<string>(line => CliCommon.Err.MarkupLineInterpolated($"[grey]bench {line}[/]"));
            var report = KernelBenchmark.Run(device, shapeList, type, options, progress, ct);
            return BenchCommand.Show(parse, report.ToReport());
        }));
        return command;
    }
}
