using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Serialization;
using CombaDistill.IO;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CombaDistill.Distillation;

/// <summary>Everything besides tensors that a stage needs to continue exactly where a checkpoint was taken.</summary>
public sealed record TrainingState
{
    /// <summary>Optimizer steps completed.</summary>
    public required long Step { get; init; }
    public required long Tokens { get; init; }
    public required DataPosition Data { get; init; }
    /// <summary>The scheduler's state: the learning rate is a pure function of <see cref="Step"/>; recorded for reading.</summary>
    public required double LearningRate { get; init; }
    /// <summary>torch's CPU generator state, base64.</summary>
    public required string RngState { get; init; }
    /// <summary>Training seconds spent before this checkpoint (over all sessions).</summary>
    public required double ElapsedSeconds { get; init; }
    /// <summary>Names of the saved parameters; a resumed stage must select exactly these.</summary>
    public required IReadOnlyList<string> Parameters { get; init; }
}

/// <summary>
/// A stage's checkpoints: <c>checkpoints/step-NNNNNNNN/</c> holding the trainable parameters (weights.safetensors;
/// every other parameter is the stage's input, unchanged), the AdamW state (optimizer.bin, TorchSharp's own format:
/// per parameter the step count and both moments), state.json, and checksums.sha256 over those files (the format
/// of <c>sha256sum</c>, so <c>sha256sum -c</c> checks it by hand). A checkpoint folder appears only complete; one
/// whose files no longer match their checksums is skipped on resume.
/// </summary>
public static class StageCheckpoints
{
    public const string WeightsFile = "weights.safetensors", OptimizerFile = "optimizer.bin", StateFile = "state.json", ChecksumFile = "checksums.sha256";
    const string Prefix = "step-";
    static readonly string[] CheckpointFiles = [WeightsFile, OptimizerFile, StateFile];

    static readonly JsonSerializerOptions Json = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals };

    public static string PathOf(string checkpointsFolder, long step) => Path.Combine(checkpointsFolder, $"{Prefix}{step:D8}");

    /// <summary>Writes a checkpoint for <paramref name="state"/>.Step and deletes all but the newest <paramref name="keep"/>.</summary>
    public static string Save(string checkpointsFolder, IReadOnlyList<(string Name, Parameter Parameter)> trainable, OptimizerHelper optimizer, TrainingState state, int keep)
    {
        Directory.CreateDirectory(checkpointsFolder);
        AtomicDirectory.RecoverAll(checkpointsFolder);   // what a kill during an earlier save left
        var final = PathOf(checkpointsFolder, state.Step);
        using (var folder = AtomicDirectory.CreateReplacingOwn(final))
        {
            SafeTensorsWriter.Write(Path.Combine(folder.Path, WeightsFile), trainable.Select(p => KeyValuePair.Create(p.Name, (Tensor)p.Parameter)));
            OptimizerStateFile.Save(optimizer, Path.Combine(folder.Path, OptimizerFile));
            AtomicFile.WriteAllText(Path.Combine(folder.Path, StateFile), JsonSerializer.Serialize(state, Json) + "\n");
            WriteChecksums(folder.Path, CheckpointFiles);
            folder.Commit();
        }
        foreach (var old in List(checkpointsFolder).SkipLast(keep))
            Directory.Delete(old.Path, recursive: true);
        return final;
    }

    /// <summary>The stage's checkpoint folders, oldest first.</summary>
    public static IReadOnlyList<(long Step, string Path)> List(string checkpointsFolder)
    {
        if (!Directory.Exists(checkpointsFolder)) return [];
        return Directory.GetDirectories(checkpointsFolder, Prefix + "*")
            .Select(d => (Ok: long.TryParse(Path.GetFileName(d)[Prefix.Length..], out var step), Step: step, Path: d))
            .Where(d => d.Ok)
            .OrderBy(d => d.Step)
            .Select(d => (d.Step, d.Path))
            .ToList();
    }

    /// <summary>Null when every file is present and matches checksums.sha256; else what is wrong.</summary>
    public static string? Problem(string checkpoint) => ChecksumProblem(checkpoint, CheckpointFiles);

    /// <summary>Writes <c>checksums.sha256</c> (sha256sum's format) over <paramref name="files"/> of <paramref name="folder"/>.</summary>
    public static void WriteChecksums(string folder, IEnumerable<string> files) =>
        AtomicFile.WriteAllText(Path.Combine(folder, ChecksumFile), string.Concat(files.Select(f => $"{Sha256(Path.Combine(folder, f))}  {f}\n")));

    /// <summary>Null when each of <paramref name="files"/> is present and matches <c>checksums.sha256</c>; else what is wrong.</summary>
    public static string? ChecksumProblem(string folder, IEnumerable<string> files)
    {
        var sumsPath = Path.Combine(folder, ChecksumFile);
        if (!File.Exists(sumsPath)) return $"{ChecksumFile} is missing";
        var expected = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var line in File.ReadAllLines(sumsPath).Where(l => l.Length > 0))
        {
            var parts = line.Split("  ", 2);
            if (parts.Length != 2 || parts[0].Length != 64) return $"{ChecksumFile} is malformed";
            expected[parts[1]] = parts[0];
        }
        foreach (var file in files)
        {
            if (!expected.TryGetValue(file, out var sum)) return $"{ChecksumFile} does not list {file}";
            var path = Path.Combine(folder, file);
            if (!File.Exists(path)) return $"{file} is missing";
            if (!string.Equals(Sha256(path), sum, StringComparison.OrdinalIgnoreCase)) return $"{file} does not match its SHA-256 checksum";
        }
        return null;
    }

    public static TrainingState ReadState(string checkpoint)
    {
        var path = Path.Combine(checkpoint, StateFile);
        try
        {
            var state = JsonSerializer.Deserialize<TrainingState>(InputFile.ReadAllText(path, StateFile), Json) ?? throw new InvalidInputException(path, "empty state");
            if (state.Step < 0 || state.Tokens < 0 || state.RngState is null || state.Parameters is null)
                throw new InvalidInputException(path, "not a training state (a field is missing or negative)");
            return state;
        }
        catch (Exception e) when (e is JsonException or NotSupportedException or InvalidOperationException)
        {
            throw new InvalidInputException(path, $"not a training state ({Bounded.Text(e.Message, 160)})", e);
        }
    }

    /// <summary>
    /// Restores the newest checkpoint that loads: one whose checksums fail, whose state.json does not parse, whose RNG
    /// state or weights do not fit this stage, or whose loading fails for any other reason is reported to
    /// <paramref name="warn"/> and skipped for the one before it. Null when none is left (the stage then starts
    /// afresh). Everything that can be checked is checked before a parameter is touched; should a load fail after
    /// that, with no older checkpoint to overwrite it, the stage cannot start afresh from half-loaded parameters and
    /// an <see cref="InvalidInputException"/> says to run it again without --resume.
    /// </summary>
    public static (string Path, TrainingState State)? RestoreNewest(string checkpointsFolder, IReadOnlyList<(string Name, Parameter Parameter)> trainable,
        OptimizerHelper optimizer, Action<string> warn)
    {
        string? touched = null;
        foreach (var (_, path) in List(checkpointsFolder).Reverse())
        {
            string problem;
            try
            {
                problem = Problem(path) ?? "";
                if (problem.Length == 0)
                {
                    var state = ReadState(path);
                    var rng = CheckFits(path, trainable, state);
                    touched = path;
                    Restore(path, trainable, optimizer, state);
                    using (var rngState = tensor(rng, ScalarType.Byte)) set_rng_state(rngState);
                    return (path, state);
                }
            }
            catch (Exception e) when (e is not OperationCanceledException and not OutOfMemoryException)
            {
                problem = Bounded.Line(e.Message, 200);
            }
            warn($"checkpoint {path} is damaged or does not fit this stage ({problem}); skipping it");
        }
        if (touched is not null)
            throw new InvalidInputException(checkpointsFolder, $"no checkpoint could be loaded, and {Path.GetFileName(touched)} failed after its weights were partly restored; run the stage again without --resume");
        return null;
    }

    /// <summary>Checks state.json's parameter list and RNG state and the weights' names and shapes against this stage; the decoded RNG state.</summary>
    static byte[] CheckFits(string checkpoint, IReadOnlyList<(string Name, Parameter Parameter)> trainable, TrainingState state)
    {
        if (!state.Parameters.SequenceEqual(trainable.Select(p => p.Name)))
            throw new InvalidInputException(checkpoint, "was saved with another set of trainable parameters than this stage selects (was the recipe's 'trainable' changed?)");
        byte[] rng;
        try { rng = Convert.FromBase64String(state.RngState); }
        catch (FormatException e) { throw new InvalidInputException(Path.Combine(checkpoint, StateFile), "field 'rng_state' is not base64", e); }
        using (var current = get_rng_state())
            if (rng.Length != current.shape[0])
                throw new InvalidInputException(Path.Combine(checkpoint, StateFile), $"field 'rng_state' holds {rng.Length} bytes; the generator's state is {current.shape[0]}");
        using var weights = Checkpoint.Open(Path.Combine(checkpoint, WeightsFile));
        foreach (var (name, parameter) in trainable)
        {
            var info = weights.Info(name);
            if (!info.Shape.SequenceEqual(parameter.shape))
                throw new InvalidInputException(checkpoint, $"parameter '{name}' has shape {info.ShapeText}; the student's is [{string.Join(", ", parameter.shape)}]");
            if (!StateDictLoader.Convertible(info.ScalarType, parameter.dtype))
                throw new InvalidInputException(checkpoint, $"parameter '{name}' is {info.DType}, which does not convert to {parameter.dtype}");
        }
        return rng;
    }

    /// <summary>Loads the saved parameters into <paramref name="trainable"/> (names must match exactly) and the optimizer state.</summary>
    public static void Restore(string checkpoint, IReadOnlyList<(string Name, Parameter Parameter)> trainable, OptimizerHelper optimizer, TrainingState state)
    {
        if (!state.Parameters.SequenceEqual(trainable.Select(p => p.Name)))
            throw new InvalidInputException(checkpoint, "was saved with another set of trainable parameters than this stage selects (was the recipe's 'trainable' changed?)");
        using (var weights = Checkpoint.Open(Path.Combine(checkpoint, WeightsFile)))
        using (no_grad())
        {
            foreach (var (name, parameter) in trainable)
            {
                using var value = weights.Read(name, parameter.dtype, parameter.device);
                if (!value.shape.SequenceEqual(parameter.shape))
                    throw new InvalidInputException(checkpoint, $"parameter '{name}' has shape [{string.Join(", ", value.shape)}]; the student's is [{string.Join(", ", parameter.shape)}]");
                parameter.copy_(value);
            }
        }
        OptimizerStateFile.Load(optimizer, Path.Combine(checkpoint, OptimizerFile));
    }

    static string Sha256(string path)
    {
        using var stream = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(stream));
    }
}
