using System.Diagnostics;
using CombaDistill.IO;
using CombaDistill.Modeling;
using CombaDistill.Modeling.Comba;
using CombaDistill.Modeling.Llama;
using CombaDistill.Ops;
using CombaDistill.Runtime;
using CombaDistill.Runtime.Cuda;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Distillation;

/// <summary>What <see cref="DistillationBenchmark.Run"/> measures.</summary>
public sealed record DistillBenchOptions
{
    /// <summary>Optimizer steps timed per measured stage, after <see cref="Warmup"/> untimed ones.</summary>
    public int Steps { get; init; } = 20;
    public int Warmup { get; init; } = 3;   // at least 1: the clock starts at the end of a step

    /// <summary>Stages to measure, by name; null: all. Earlier stages still run, for one step each, to give the later ones their input.</summary>
    public IReadOnlyList<string>? Stages { get; init; }

    /// <summary>Where the student trains and the teacher runs; the CPU by default.</summary>
    public Device? Device { get; init; }

    /// <summary>Timed repetitions of each probe (teacher forward, Comba op forward+backward); the median is kept.</summary>
    public int ProbeRepeats { get; init; } = 5;

    public void Validate()
    {
        if (Steps < 1) throw new ArgumentException($"--steps is {Steps}; expected at least 1");
        if (Warmup < 1) throw new ArgumentException($"--warmup is {Warmup}; expected at least 1 (the clock starts when a step ends)");
        if (ProbeRepeats < 1) throw new ArgumentException($"probe repeats is {ProbeRepeats}; expected at least 1");
    }
}

/// <summary>
/// One stage's speed. Step time and tokens/s are measured over the timed steps of a real run of the stage (the
/// recipe's batch, sequence length, objective and trainable set). The teacher's and the Comba op's shares are
/// estimates: each is timed alone at the stage's shapes and multiplied by how often a step calls it.
/// </summary>
/// <param name="PeakResidentBytes">the process's peak resident memory over the timed steps (VmHWM; null where it cannot be read)</param>
/// <param name="PeakDeviceBytes">the most GPU memory in use after any timed step (total − free, so PyTorch's cache and other processes count); null off CUDA</param>
/// <param name="CombaShape">the recurrence's (B, H, T, Dk, Dv) per call</param>
/// <param name="CombaPath">"fused" (the CUDA kernels) or why the op took the TorchSharp chunkwise path</param>
/// <param name="CombaCallsPerStep">forward+backward calls of the op per optimizer step (Comba layers × micro-batches)</param>
/// <remarks>The phases of a step, by contrast, are measured inside the timed steps themselves (<see cref="StepPhases"/>).</remarks>
public sealed record StageSpeed(
    string Stage, string Objective, long TokensPerStep, int TimedSteps, double StepMs, double TokensPerSecond,
    long? PeakResidentBytes, long? PeakDeviceBytes,
    double TeacherForwardMs, int TeacherCallsPerStep, double TeacherShare,
    string CombaShape, string CombaPath, double CombaMs, int CombaCallsPerStep, double CombaShare, string Precision = "float32")
{
    /// <summary>Each phase's device time per timed step, in step order (<see cref="StepPhases"/>); empty where not timed.</summary>
    public IReadOnlyList<(string Phase, double MsPerStep)> Phases { get; init; } = [];

    /// <summary>
    /// One Comba layer's mixer (self_attn) forward+backward, timed alone at the stage's shapes, and parts of it timed
    /// alone the same way ("mixer" first, then its short convolutions and its projections); empty without Comba layers.
    /// What the mixer takes beyond the op and these parts is its elementwise work (rotary, gates, layouts, norms).
    /// </summary>
    public IReadOnlyList<(string Part, double Ms)> MixerParts { get; init; } = [];
}

public sealed record DistillBenchReport(string Device, string Recipe, int Warmup, int Steps, IReadOnlyList<StageSpeed> Stages, double Seconds)
{
    static readonly BenchColumn[] Columns =
    [
        new("stage", "stage", BenchUnit.Text), new("objective", "objective", BenchUnit.Text), new("precision", "precision", BenchUnit.Text),
        new("tokensPerSecond", "tokens/s", BenchUnit.PerSecond), new("stepMs", "ms/step", BenchUnit.Milliseconds),
        new("peakDeviceBytes", "peak GPU", BenchUnit.Bytes), new("peakResidentBytes", "peak RSS", BenchUnit.Bytes),
        new("teacherShare", "teacher fwd", BenchUnit.Share), new("combaShare", "Comba op fwd+bwd", BenchUnit.Share),
        new("tokensPerStep", "tokens/step", BenchUnit.Count, InTable: false), new("timedSteps", "timed steps", BenchUnit.Count, InTable: false),
        new("teacherForwardMs", "teacher fwd ms", BenchUnit.Milliseconds, InTable: false), new("teacherCallsPerStep", "teacher calls/step", BenchUnit.Count, InTable: false),
        new("combaMs", "Comba op ms", BenchUnit.Milliseconds, InTable: false), new("combaCallsPerStep", "Comba calls/step", BenchUnit.Count, InTable: false),
        new("combaShape", "Comba (B, H, T, Dk, Dv)", BenchUnit.Text, InTable: false), new("combaPath", "Comba path", BenchUnit.Text, InTable: false),
        new("phasesMs", "phases (ms per step)", BenchUnit.Milliseconds, InTable: false),
        new("mixerMs", "one Comba mixer fwd+bwd and its parts (ms)", BenchUnit.Milliseconds, InTable: false),
    ];

    /// <summary>The one result shape of every <c>bench</c> command.</summary>
    public BenchReport ToReport() => new BenchReport
    {
        Benchmark = "distill",
        Title = $"{System.IO.Path.GetFileName(Recipe)} on {Device}, {Steps} timed steps per stage",
        Device = Device,
        Timing = "wall clock from the end of the warm-up to the end of the last timed step (each step reads its loss, so waits for the device)",
        Settings = new Dictionary<string, object?> { ["recipe"] = Recipe, ["warmup"] = Warmup, ["steps"] = Steps, ["seconds"] = Seconds },
        Columns = Columns,
        Rows = Stages.Select(s => (IReadOnlyDictionary<string, object?>)new Dictionary<string, object?>
        {
            ["stage"] = s.Stage, ["objective"] = s.Objective, ["precision"] = s.Precision,
            ["tokensPerSecond"] = s.TokensPerSecond, ["stepMs"] = s.StepMs,
            ["peakDeviceBytes"] = s.PeakDeviceBytes, ["peakResidentBytes"] = s.PeakResidentBytes,
            ["teacherShare"] = s.TeacherShare, ["combaShare"] = s.CombaShare,
            ["tokensPerStep"] = s.TokensPerStep, ["timedSteps"] = s.TimedSteps,
            ["teacherForwardMs"] = s.TeacherForwardMs, ["teacherCallsPerStep"] = s.TeacherCallsPerStep,
            ["combaMs"] = s.CombaMs, ["combaCallsPerStep"] = s.CombaCallsPerStep, ["combaShape"] = s.CombaShape, ["combaPath"] = s.CombaPath,
            // phase name → ms per step, in step order (the table's note lists them too)
            ["phasesMs"] = s.Phases.Count == 0 ? null : s.Phases.ToDictionary(p => p.Phase, p => p.MsPerStep),
            ["mixerMs"] = s.MixerParts.Count == 0 ? null : s.MixerParts.ToDictionary(p => p.Part, p => p.Ms),
        }).ToList(),
        Notes =
        [
            "shares: each part timed alone at the stage's shapes, times its calls per step, over the measured step",
            .. Stages.Select(s => $"{s.Stage}: teacher {s.TeacherForwardMs:F2} ms × {s.TeacherCallsPerStep}, Comba op {s.CombaMs:F2} ms × {s.CombaCallsPerStep} " +
                                  $"({s.CombaPath}, (B, H, T, Dk, Dv) = {s.CombaShape})"),
            .. Stages.Where(s => s.MixerParts.Count > 0).Select(s => $"{s.Stage}: one Comba mixer (self_attn) fwd+bwd {s.MixerParts[0].Ms:F2} ms × {s.CombaCallsPerStep}, " +
                $"of which, each timed alone: the op {s.CombaMs:F2}, " + string.Join(", ", s.MixerParts.Skip(1).Select(p => $"{p.Part} {p.Ms:F2}")) +
                Rest(s.MixerParts[0].Ms - s.CombaMs - s.MixerParts.Skip(1).Sum(p => p.Ms))),
            "phases: device time per timed step between marks inside the step (CUDA events on the default stream; on the CPU, wall time)",
            .. Stages.Where(s => s.Phases.Count > 0).Select(s => $"{s.Stage} phases: " +
                string.Join("; ", s.Phases.Select(p => $"{p.Phase} {p.MsPerStep:F1} ms")) + $" (together {s.Phases.Sum(p => p.MsPerStep):F1} of {s.StepMs:F1} ms/step)"),
        ],
    }.Checked();

    // timed alone, each part pays its own launches and synchronisation, so on a fast mixer (or with CPU noise) the parts
    // can add up to more than the whole
    static string Rest(double ms) => ms >= 0 ? $"; the rest {ms:F2}" : $"; the parts timed alone add up to {-ms:F2} ms more than the whole";
}

/// <summary>
/// <c>combadistill bench distill</c>: runs a recipe's stages for a few steps each in a throwaway run folder and
/// reports tokens/s, peak memory, and the shares of a step spent in the teacher and in the Comba op.
/// </summary>
public static class DistillationBenchmark
{
    /// <param name="workFolder">an empty or missing folder for the throwaway run; deleted afterwards unless <paramref name="keep"/></param>
    public static DistillBenchReport Run(Recipe recipe, string workFolder, DistillBenchOptions options, bool keep = false,
        IProgress<DistillationProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        options.Validate();
        var device = options.Device ?? CPU;
        var measured = (options.Stages ?? recipe.Stages.Select(s => s.Name).ToArray()).Distinct().ToArray();
        foreach (var name in measured)
            if (recipe.Stages.All(s => s.Name != name))
                throw new InvalidInputException(recipe.SourcePath, $"has no stage named '{name}'; its stages are {string.Join(", ", recipe.Stages.Select(s => s.Name))}");
        if (Directory.Exists(workFolder) && Directory.EnumerateFileSystemEntries(workFolder).Any())
            throw new InvalidInputException(workFolder, "is not empty; the benchmark needs an empty work folder");

        var bench = BenchRecipe(recipe, measured, options);
        var clock = Stopwatch.StartNew();
        using var phases = new StepPhases(device);
        var timing = new StepClock(measured, options.Warmup, device, progress, phases);
        var created = !Directory.Exists(workFolder);
        try
        {
            DistillationRun.Run(bench, workFolder, new DistillOptions { Device = device, TensorBoard = false, Phases = phases }, timing, cancellationToken);
            var teacherFolder = recipe.Teacher.Folder ?? Path.Combine(workFolder, "teacher");
            var teacherType = device.type == DeviceType.CUDA ? ScalarType.BFloat16 : ScalarType.Float32;
            using var teacher = LlamaForCausalLM.FromPretrained(teacherFolder, teacherType, device);
            var stages = new List<StageSpeed>();
            for (var i = 0; i < bench.Stages.Count; i++)
            {
                var stage = bench.Stages[i];
                if (!measured.Contains(stage.Name)) continue;
                cancellationToken.ThrowIfCancellationRequested();
                var studentFolder = Path.Combine(DistillationRun.StageFolder(workFolder, bench, i), StageTrainer.ResultFolder);
                using var student = CombaForCausalLM.FromPretrained(studentFolder, ScalarType.Float32, device);
                stages.Add(Measure(stage, timing.Stages[stage.Name], teacher, student, PrecisionChoice.Resolve(recipe.Precision, device), options, device, cancellationToken)
                    with { Phases = timing.Stages[stage.Name].Phases });
            }
            return new DistillBenchReport(CudaDevice.Describe(device), recipe.SourcePath, options.Warmup, options.Steps, stages, clock.Elapsed.TotalSeconds);
        }
        finally
        {
            if (!keep)
            {
                if (created) DeleteQuietly(workFolder);
                else foreach (var entry in Directory.EnumerateFileSystemEntries(workFolder)) DeleteQuietly(entry);
            }
        }
    }

    /// <summary>
    /// The recipe cut down to a benchmark: measured stages run warm-up + timed steps, the stages before them one step
    /// each, later ones not at all; no checkpoints, one evaluation window, a small validation set.
    /// </summary>
    static Recipe BenchRecipe(Recipe recipe, string[] measured, DistillBenchOptions options)
    {
        var last = recipe.Stages.Select((s, i) => (s, i)).Where(x => measured.Contains(x.s.Name)).Max(x => x.i);
        var stages = recipe.Stages.Take(last + 1).Select(s =>
        {
            var steps = measured.Contains(s.Name) ? options.Warmup + options.Steps : 1;
            return s with
            {
                Steps = steps, Tokens = null, LogEvery = 1, EvalEvery = int.MaxValue, CheckpointEvery = int.MaxValue,
                Schedule = s.Schedule with { WarmupSteps = Math.Min(s.Schedule.WarmupSteps, steps) },
            };
        }).ToArray();
        var longest = stages.Max(s => s.SequenceLength);
        var validation = recipe.Data.Validation is { } v ? v with { MaxTokens = Math.Min(v.MaxTokens ?? long.MaxValue, 2L * longest + 1) } : null;
        return recipe with { Stages = stages, Data = recipe.Data with { Validation = validation, EvalTokens = longest } };
    }

    static StageSpeed Measure(StageRecipe stage, StepClock.StageTimes times, LlamaForCausalLM teacher, CombaForCausalLM student,
        Precision precision, DistillBenchOptions options, Device device, CancellationToken cancellationToken)
    {
        if (times.TimedSteps == 0 || times.Seconds <= 0)
            throw new InvalidOperationException($"stage '{stage.Name}' reported no timed steps");
        var stepMs = times.Seconds * 1000 / times.TimedSteps;
        var config = student.StudentConfig;
        var arch = config.Architecture;

        var teacherMs = Median(options.ProbeRepeats, device, cancellationToken, () =>
        {
            var ids = randint(arch.VocabSize, [stage.MicroBatch, stage.SequenceLength], dtype: ScalarType.Int64, device: device);
            return () =>
            {
                using var _ = no_grad();
                teacher.model.forward(ids);
            };
        });

        var (heads, kvHeads, headDim) = (arch.NumAttentionHeads, arch.NumKeyValueHeads, arch.HeadDim);
        var (keyDim, valueDim) = (config.Comba.KeyDim(headDim), config.Comba.ValueDim(headDim));
        var (b, t) = (stage.MicroBatch, stage.SequenceLength);
        string path = "none: no Comba layers";
        var combaMs = 0.0;
        if (config.CombaLayerCount > 0)
        {
            combaMs = Median(options.ProbeRepeats, device, cancellationToken, () =>
            {
                // q, k, v in the student's compute type; the gates are float32 in either precision (CombaAttention)
                var activations = precision == Precision.BFloat16 ? ScalarType.BFloat16 : ScalarType.Float32;
                var (q, k, v, g, beta, lambda, d, gradient) = CombaBenchInputs.Random(b, heads, kvHeads, t, keyDim, valueDim, activations, device,
                    requiresGrad: true, gatesRequireGrad: true, initialD: config.Comba.InitialD);
                path = FusedComba.UnsupportedReason(q, k, v, config.Comba.ChunkSize) is { } why ? $"chunkwise ({why})" : "fused";
                return () =>
                {
                    FusedComba.Forward(q, k, v, g, beta, lambda, d, config.Comba.Scale, chunkSize: config.Comba.ChunkSize).Output.backward([gradient]);
                    foreach (var leaf in new[] { q, k, v, g, beta, lambda, d }) leaf.grad = null;
                };
            });
        }
        var mixerParts = config.CombaLayerCount > 0 ? MeasureMixer(stage, student, precision, options, device, cancellationToken) : [];
        var teacherCalls = stage.Accumulation;
        var combaCalls = config.CombaLayerCount * stage.Accumulation;
        return new StageSpeed(stage.Name, RecipeLoader.NameOf(stage.Objective), stage.TokensPerStep, times.TimedSteps, stepMs, stage.TokensPerStep / (stepMs / 1000),
            times.PeakResidentBytes, times.PeakDeviceBytes,
            teacherMs, teacherCalls, teacherMs * teacherCalls / stepMs,
            $"({b}, {heads}, {t}, {keyDim}, {valueDim})", path, combaMs, combaCalls, combaMs * combaCalls / stepMs, PrecisionChoice.NameOf(precision))
            { MixerParts = mixerParts };
    }

    /// <summary>
    /// The first Comba layer's mixer forward+backward on random hidden states at the stage's shapes, in the stage's
    /// compute type, with every parameter of the mixer taking a gradient (as both stages train it) and the input taking
    /// one where layers below it train (not in attention alignment); then its three short convolutions and its six
    /// projections the same way. Run last: it turns the student into the compute type.
    /// </summary>
    static IReadOnlyList<(string Part, double Ms)> MeasureMixer(StageRecipe stage, CombaForCausalLM student, Precision precision,
        DistillBenchOptions options, Device device, CancellationToken cancellationToken)
    {
        var mixer = student.model.layers.Select(l => l.self_attn).OfType<CombaAttention>().First();
        var compute = precision == Precision.BFloat16 ? ScalarType.BFloat16 : ScalarType.Float32;
        if (compute != ScalarType.Float32) student.to(compute);
        var arch = student.StudentConfig.Architecture;
        var (b, t) = (stage.MicroBatch, stage.SequenceLength);
        var inputGradient = stage.Objective != Objective.AttentionAlignment;
        var parts = new List<(string, double)>();

        // Runs step() forward, then backward from random gradients of its outputs' shapes (each output on its own, so
        // no concatenation adds a copy); clears the gradients it made.
        double Time(Func<Tensor[], Tensor[]> step, params long[][] inputShapes) => Median(options.ProbeRepeats, device, cancellationToken, () =>
        {
            var inputs = inputShapes.Select(shape => randn(shape, dtype: compute, device: device).requires_grad_(inputGradient)).ToArray();
            Tensor[]? outputGradients = null;
            return () =>
            {
                var outputs = step(inputs);
                outputGradients ??= outputs.Select(o => randn_like(o).MoveToOuterDisposeScope()).ToArray();
                autograd.backward(outputs, outputGradients);
                foreach (var p in mixer.parameters()) p.grad = null;
                foreach (var x in inputs) x.grad = null;
            };
        });

        var (cos, sin) = RotaryEmbedding.For(arch).CosSin(0, t, compute, device);
        using (cos)
        using (sin)
        {
            parts.Add(("mixer", Time(x => [mixer.forward(x[0], cos, sin).Output], [b, t, arch.HiddenSize])));
            if (mixer.q_conv is { } qc && mixer.k_conv is { } kc && mixer.v_conv is { } vc)
            {
                var (qWidth, kvWidth) = (mixer.q_proj.weight!.shape[0], mixer.k_proj.weight!.shape[0]);
                parts.Add(("short convolutions", Time(x => [qc.forward(x[0], null).Output, kc.forward(x[1], null).Output, vc.forward(x[2], null).Output],
                    [b, t, qWidth], [b, t, kvWidth], [b, t, kvWidth])));
            }
            parts.Add(("projections", Time(x =>
                [mixer.q_proj.call(x[0]), mixer.k_proj.call(x[0]), mixer.v_proj.call(x[0]), mixer.a_proj.call(x[0]), mixer.b_proj.call(x[0]), mixer.o_proj.call(x[1])],
                [b, t, arch.HiddenSize], [b, t, mixer.o_proj.weight!.shape[1]])));
        }
        return parts;
    }

    /// <summary>The median time of a prepared action (prepared once, outside the timing) on the benchmarks' DeviceTimer, one untimed run first.</summary>
    static double Median(int repeats, Device device, CancellationToken cancellationToken, Func<Action> prepare)
    {
        using var scope = NewDisposeScope();
        var action = prepare();
        void Once()
        {
            using var inner = NewDisposeScope();
            action();
        }
        return DeviceTimer.For(device).Median(Once, warmup: 1, repeats, cancellationToken);
    }

    static void DeleteQuietly(string path)
    {
        try
        {
            if (Directory.Exists(path)) Directory.Delete(path, recursive: true);
            else if (File.Exists(path)) File.Delete(path);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    /// <summary>
    /// Listens to the run's step reports (made right after each optimizer step, once its loss has been read back, so
    /// the device is idle): the clock starts at the last warm-up step of a measured stage and stops at its last step.
    /// </summary>
    sealed class StepClock(string[] measured, int warmup, Device device, IProgress<DistillationProgress>? inner, StepPhases phases)
        : IProgress<DistillationProgress>
    {
        public sealed class StageTimes
        {
            public int TimedSteps;
            public double Seconds;
            public long? PeakResidentBytes;
            public long? PeakDeviceBytes;
            public IReadOnlyList<(string Phase, double MsPerStep)> Phases = [];
            internal long StartTicks;
        }

        public Dictionary<string, StageTimes> Stages { get; } = measured.ToDictionary(n => n, _ => new StageTimes());
        readonly CudaDevice? cuda = OpenCuda(device);

        static CudaDevice? OpenCuda(Device device)
        {
            if (device.type != DeviceType.CUDA) return null;
            try { return CudaDevice.For(device); }
            catch (Exception e) when (e is CudaUnavailableException or CudaException) { return null; }
        }

        public void Report(DistillationProgress p)
        {
            inner?.Report(p);
            if (p.Note is not null || !Stages.TryGetValue(p.Stage, out var times)) return;
            if (p.Step == warmup)
            {
                phases.Clear();
                ProcessMemory.ResetPeak();
                times.StartTicks = Stopwatch.GetTimestamp();
                times.PeakDeviceBytes = DeviceInUse();
                return;
            }
            if (p.Step <= warmup || times.StartTicks == 0) return;
            if (DeviceInUse() is { } used) times.PeakDeviceBytes = Math.Max(times.PeakDeviceBytes ?? 0, used);
            times.TimedSteps++;
            times.Seconds = Stopwatch.GetElapsedTime(times.StartTicks).TotalSeconds;
            if (p.Step == p.TotalSteps) times.Phases = phases.PerStep();   // after the clock: it waits for the last step
            if (p.Step == p.TotalSteps && ProcessMemory.Read() is { RssBytes: > 0 } memory) times.PeakResidentBytes = memory.PeakRssBytes;
        }

        long? DeviceInUse()
        {
            if (cuda is null) return null;
            try { return cuda.MemoryInUse(); }
            catch (CudaException) { return null; }
        }
    }
}
