using System.CommandLine;
using System.Globalization;
using CombaDistill.IO;
using CombaDistill.Ops;
using Spectre.Console;
using TorchSharp;

namespace CombaDistill.Cli;

/// <summary><c>combadistill bench comba [--json FILE]</c>: Chunkwise vs Naive Comba vs the teacher's SDPA, forward and forward+backward.</summary>
static class BenchCombaCommand
{
    public static Command Create()
    {
        var shapes = new Option<string[]>("--shape")
        {
            Description = "B,T,H,D (repeatable); default (4,2048,8,64) on CPU and (8,2048,16,128) (1,8192,32,128) (2,16384,16,128) on CUDA",
            AllowMultipleArgumentsPerToken = true,
        };
        var dtype = CliCommon.DTypeOption("default float32 on CPU, bfloat16 on CUDA", torch.ScalarType.Float32, torch.ScalarType.BFloat16, torch.ScalarType.Float16);
        var repeats = new Option<int>("--repeats") { Description = "timed runs per measurement (the median is reported)", DefaultValueFactory = _ => 3 };
        var warmup = new Option<int>("--warmup") { Description = "untimed runs first", DefaultValueFactory = _ => 1 };
        var chunk = new Option<int>("--chunk-size") { Description = "Chunkwise chunk size: 16, 32, 64 or 128", DefaultValueFactory = _ => 64 };
        var naiveMax = new Option<double>("--naive-backward-max-gib")
        {
            Description = "skip Naive's forward+backward where its per-step matrices would exceed this many GiB",
            DefaultValueFactory = _ => new CombaBenchOptions().NaiveBackwardMaxBytes / (double)(1L << 30),
        };
        var threads = CliCommon.ThreadsOption();

        var command = new Command("comba", "Time Chunkwise and Naive Comba against scaled_dot_product_attention (forward, forward+backward)")
        {
            shapes, dtype, repeats, warmup, chunk, naiveMax, threads,
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
            BenchCommand.CheckJsonTarget(parse);
            var options = new CombaBenchOptions
            {
                Repeats = parse.GetValue(repeats), Warmup = parse.GetValue(warmup), ChunkSize = parse.GetValue(chunk),
                NaiveBackwardMaxBytes = (long)(parse.GetValue(naiveMax) * (1L << 30)),
            };

            var progress = new Progress<string>(line => CliCommon.Err.MarkupLineInterpolated($"[grey]bench {line}[/]"));
            var results = CombaBenchmark.Run(device, shapeList, type, options, progress, ct);
            return BenchCommand.Show(parse, CombaBenchmark.ToReport(results, device, type, options));
        }));
        return command;
    }
}
