using CombaDistill.IO;
using CombaDistill.Modeling.Llama;
using CombaDistill.Runtime;
using static TorchSharp.torch;

namespace CombaDistill.Conversion;

/// <summary>
/// A conversion of a synthetic teacher against a plain copy of the same files. Speeds are over the teacher's
/// file bytes; the peak resident memory is the process's high-water mark (VmHWM) during the conversion alone.
/// </summary>
/// <param name="PeakMeasuredAlone">false when the high-water mark could not be reset before the conversion, so the
/// peak also covers writing the synthetic teacher (itself one tensor at a time)</param>
public sealed record ConversionBenchmarkResult(
    int Layers, int HiddenSize, long CheckpointBytes, long StudentBytes,
    double CopySeconds, double ConvertSeconds, long ResidentBeforeBytes, long PeakResidentBytes, bool PeakMeasuredAlone,
    long LargestTensorBytes)
{
    public double CopyGBps => CheckpointBytes / 1e9 / CopySeconds;
    public double ConvertGBps => CheckpointBytes / 1e9 / ConvertSeconds;
    /// <summary>Conversion speed as a fraction of the plain copy's.</summary>
    public double Ratio => CopySeconds / ConvertSeconds;
    /// <summary>The acceptance bound: a quarter of the checkpoint.</summary>
    public long PeakLimitBytes => CheckpointBytes / 4;
    public bool WithinLimit => PeakResidentBytes < PeakLimitBytes;

    static readonly BenchColumn[] Columns =
    [
        new("pass", "", BenchUnit.Text), new("seconds", "seconds", BenchUnit.Seconds),
        new("gigabytesPerSecond", "GB/s", BenchUnit.GigabytesPerSecond), new("peakResidentBytes", "peak resident (VmHWM)", BenchUnit.Bytes),
    ];

    /// <summary>The one result shape of every <c>bench</c> command; out of bounds when the peak passes a quarter of the checkpoint.</summary>
    public BenchReport ToReport() => new BenchReport
    {
        Benchmark = "convert",
        Title = $"synthetic bf16 teacher: {Layers} layers, hidden {HiddenSize}, {ByteSize.Format(CheckpointBytes)}",
        Device = "cpu",
        Timing = DeviceTimer.Wall.Description,
        Settings = new Dictionary<string, object?>
        {
            ["layers"] = Layers, ["hiddenSize"] = HiddenSize, ["checkpointBytes"] = CheckpointBytes, ["studentBytes"] = StudentBytes,
            ["residentBeforeBytes"] = ResidentBeforeBytes, ["largestTensorBytes"] = LargestTensorBytes,
            ["peakLimitBytes"] = PeakLimitBytes, ["peakMeasuredAlone"] = PeakMeasuredAlone,
        },
        Columns = Columns,
        Rows =
        [
            new Dictionary<string, object?> { ["pass"] = "plain copy of the files", ["seconds"] = CopySeconds, ["gigabytesPerSecond"] = CopyGBps, ["peakResidentBytes"] = null },
            new Dictionary<string, object?> { ["pass"] = "convert", ["seconds"] = ConvertSeconds, ["gigabytesPerSecond"] = ConvertGBps, ["peakResidentBytes"] = PeakResidentBytes },
        ],
        Notes =
        [
            $"resident before converting {ByteSize.Format(ResidentBeforeBytes)}; largest tensor {ByteSize.Format(LargestTensorBytes)}" +
                (PeakMeasuredAlone ? "" : "; the peak includes writing the teacher"),
            $"limit, a quarter of the checkpoint: {ByteSize.Format(PeakLimitBytes)}: " + (WithinLimit ? "within the limit" : "over the limit"),
        ],
        WithinBounds = WithinLimit,
    }.Checked();
}

public static class ConversionBenchmark
{
    /// <summary>
    /// By default a bf16 Llama teacher of hidden 2048 (16 heads over 4 KV heads, intermediate 5632, vocabulary 32000, untied),
    /// with as many layers as reach <paramref name="targetBytes"/>; its largest tensor (the embedding, 131 MB) is
    /// what a streaming conversion should need to hold at once.
    /// </summary>
    public static LlamaConfig SyntheticTeacher(long targetBytes, LlamaConfig? shape = null)
    {
        var config = shape ?? new LlamaConfig
        {
            ModelType = "llama", VocabSize = 32000, HiddenSize = 2048, IntermediateSize = 5632, NumAttentionHeads = 16,
            NumKeyValueHeads = 4, HeadDim = 128, NumHiddenLayers = 1, MaxPositionEmbeddings = 4096, RmsNormEps = 1e-5, TorchDtype = "bfloat16",
        };
        long Bytes(LlamaConfig c) => 2 * ConversionPlan.Create(new Modeling.Comba.CombaStudentConfig { Architecture = c }).TeacherParameterCount;
        var fixedBytes = Bytes(config with { NumHiddenLayers = 0 });
        var perLayer = Bytes(config with { NumHiddenLayers = 1 }) - fixedBytes;
        return config with { NumHiddenLayers = (int)Math.Max(1, (targetBytes - fixedBytes + perLayer - 1) / perLayer) };
    }

    /// <param name="workFolder">where the teacher, the copy and the student are written (and deleted afterwards unless <paramref name="keep"/>)</param>
    /// <param name="stage">names each stage as it starts</param>
    /// <param name="shape">the teacher's architecture but for its depth (default: see <see cref="SyntheticTeacher"/>)</param>
    public static ConversionBenchmarkResult Run(string workFolder, long targetBytes = 2_000_000_000, bool keep = false,
        IProgress<string>? stage = null, IProgress<ConversionProgress>? progress = null, CancellationToken cancellationToken = default,
        LlamaConfig? shape = null)
    {
        var config = SyntheticTeacher(targetBytes, shape);
        Directory.CreateDirectory(workFolder);
        var teacher = Path.Combine(workFolder, "teacher");
        var copy = Path.Combine(workFolder, "copy");
        var student = Path.Combine(workFolder, "student");
        foreach (var folder in new[] { teacher, copy, student })
            if (Directory.Exists(folder)) throw new InvalidInputException(folder, "exists; the benchmark needs an empty work folder");
        try
        {
            stage?.Report($"writing a synthetic {config.NumHiddenLayers}-layer bf16 teacher");
            WriteSyntheticTeacher(teacher, config, cancellationToken);
            using var checkpoint = Checkpoint.Open(teacher);
            var checkpointBytes = checkpoint.Files.Sum(f => new FileInfo(f).Length);
            var largest = checkpoint.Names.Max(n => checkpoint.Info(n).ByteSize);

            stage?.Report("copying the same files");
            var copySeconds = Time(() => CopyFiles(checkpoint.Files, copy, cancellationToken));
            Directory.Delete(copy, recursive: true);

            stage?.Report("converting");
            GC.Collect();
            var peakReset = ProcessMemory.ResetPeak();
            var before = ProcessMemory.Read().RssBytes;
            ConversionReport? report = null;
            var convertSeconds = Time(() => report = CombaConverter.Convert(teacher, student, new ConversionOptions(), progress: progress, cancellationToken: cancellationToken));
            // The kernel refreshes its high-water mark only at certain events (an unmap, for one), and other threads may free
            // memory between the reset and the first sample, so VmHWM can read below the resident size sampled before.
            var peak = Math.Max(ProcessMemory.Read().PeakRssBytes, before);
            return new ConversionBenchmarkResult(config.NumHiddenLayers, config.HiddenSize, checkpointBytes, report!.BytesWritten,
                copySeconds, convertSeconds, before, peak, peakReset, largest);
        }
        finally
        {
            if (!keep)
                foreach (var folder in new[] { teacher, copy, student })
                    if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>Random bf16 weights, 1 GB shards, written one tensor at a time.</summary>
    static void WriteSyntheticTeacher(string folder, LlamaConfig config, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(folder);
        var plan = config.Tensors()
            .Select(t => new PlannedTensor(t.Name, ScalarType.BFloat16, t.Shape)).ToList();
        CheckpointWriter.WriteStreaming(folder, plan, name =>
        {
            cancellationToken.ThrowIfCancellationRequested();
            var shape = plan.First(t => t.Name == name).Shape;
            return empty(shape, ScalarType.BFloat16).uniform_(-0.05, 0.05);
        }, maxShardBytes: 1_000_000_000);
        AtomicFile.WriteAllText(Path.Combine(folder, "config.json"), config.ToJson().ToJsonString() + "\n");
    }

    /// <summary>The baseline: the same bytes read and written with plain streams, flushed to disk as the converter does.</summary>
    static void CopyFiles(IEnumerable<string> files, string target, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(target);
        var buffer = new byte[1 << 20];
        foreach (var file in files)
        {
            using var input = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
            using var output = new FileStream(Path.Combine(target, Path.GetFileName(file)), FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20);
            int read;
            while ((read = input.Read(buffer)) > 0)
            {
                cancellationToken.ThrowIfCancellationRequested();
                output.Write(buffer, 0, read);
            }
            output.Flush(flushToDisk: true);
        }
    }

    static double Time(Action action) => DeviceTimer.Wall.Measure(action) / 1000;
}
