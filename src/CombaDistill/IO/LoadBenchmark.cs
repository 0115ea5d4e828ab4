using CombaDistill.Runtime;

namespace CombaDistill.IO;

/// <summary>
/// Checkpoint read speed next to the speed of simply reading the same files from start to end.
/// <see cref="Bytes"/> is tensor data (what <see cref="CheckpointGBps"/> is over); <see cref="FileBytes"/>
/// includes the headers (what <see cref="SequentialGBps"/> is over). Times are medians.
/// </summary>
public sealed record LoadBenchmarkResult(
    long Bytes, double CheckpointGBps, double SequentialGBps,
    long FileBytes, int Tensors, int Files, int Repeats, double CheckpointSeconds, double SequentialSeconds)
{
    /// <summary>Checkpoint speed as a fraction of the sequential read's.</summary>
    public double Ratio => SequentialGBps > 0 ? CheckpointGBps / SequentialGBps : 0;

    static readonly BenchColumn[] Columns =
    [
        new("read", "read", BenchUnit.Text), new("bytes", "bytes", BenchUnit.Bytes),
        new("seconds", "median s", BenchUnit.Seconds), new("gigabytesPerSecond", "GB/s", BenchUnit.GigabytesPerSecond),
    ];

    /// <summary>The one result shape of every <c>bench</c> command.</summary>
    public BenchReport ToReport(string model) => new BenchReport
    {
        Benchmark = "load",
        Title = $"{Tensors} tensors in {Files} file(s), median of {Repeats}",
        Device = "cpu",
        Timing = DeviceTimer.Wall.Description + " (page cache warm for both reads)",
        Settings = new Dictionary<string, object?> { ["model"] = model, ["repeats"] = Repeats, ["tensors"] = Tensors, ["files"] = Files },
        Columns = Columns,
        Rows =
        [
            new Dictionary<string, object?> { ["read"] = "checkpoint (every tensor)", ["bytes"] = Bytes, ["seconds"] = CheckpointSeconds, ["gigabytesPerSecond"] = CheckpointGBps },
            new Dictionary<string, object?> { ["read"] = "sequential FileStream", ["bytes"] = FileBytes, ["seconds"] = SequentialSeconds, ["gigabytesPerSecond"] = SequentialGBps },
        ],
        Notes = [$"checkpoint / sequential = {Ratio:P0}"],
    }.Checked();
}

public static class LoadBenchmark
{
    /// <summary>
    /// Reads every tensor of the checkpoint (into CPU tensors, in its stored dtype) and, in the same run,
    /// every byte of its files with a plain FileStream. Both are read once first so both time a warm page
    /// cache (dropping the cache needs root); then they alternate for <paramref name="repeats"/> rounds.
    /// </summary>
    public static LoadBenchmarkResult Run(string modelPath, int repeats = 5, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(repeats);
        using var checkpoint = Checkpoint.Open(modelPath);
        var files = checkpoint.Files;
        var fileBytes = files.Sum(f => new FileInfo(f).Length);

        ReadAllTensors(checkpoint);
        ReadFilesSequentially(files);
        var checkpointTimes = new List<double>();
        var sequentialTimes = new List<double>();
        for (var r = 0; r < repeats; r++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            checkpointTimes.Add(Time(() => ReadAllTensors(checkpoint)));
            sequentialTimes.Add(Time(() => ReadFilesSequentially(files)));
        }
        var checkpointSeconds = Statistics.Median(checkpointTimes);
        var sequentialSeconds = Statistics.Median(sequentialTimes);
        return new LoadBenchmarkResult(
            checkpoint.TotalBytes, GBps(checkpoint.TotalBytes, checkpointSeconds), GBps(fileBytes, sequentialSeconds),
            fileBytes, checkpoint.Names.Count, files.Count, repeats, checkpointSeconds, sequentialSeconds);
    }

    static void ReadAllTensors(Checkpoint checkpoint)
    {
        foreach (var name in checkpoint.Names)
        {
            using var tensor = checkpoint.Read(name);
        }
    }

    static void ReadFilesSequentially(IReadOnlyList<string> files)
    {
        var buffer = new byte[4 << 20];
        foreach (var file in files)
        {
            using var stream = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1, FileOptions.SequentialScan);
            while (stream.Read(buffer) > 0) { }
        }
    }

    static double Time(Action action) => DeviceTimer.Wall.Measure(action) / 1000;

    static double GBps(long bytes, double seconds) => seconds > 0 ? bytes / seconds / 1e9 : 0;
}
