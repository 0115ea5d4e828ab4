using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.RegularExpressions;
using CombaDistill.IO;
using CombaDistill.Modeling.Comba;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CombaDistill.Distillation;

/// <summary>
/// Shard <see cref="Index"/> of <see cref="Count"/> of an attention-alignment stage: one contiguous block of the
/// student's aligned layers, trained as an independent job. Blocks differ in size by at most one layer, the larger
/// ones first; contiguous blocks keep the teacher's forward pass in the lower shards short.
/// </summary>
public readonly record struct LayerShard(int Index, int Count)
{
    /// <summary>Parses <c>I/N</c> (0 ≤ I &lt; N), the form of <c>--shard</c>.</summary>
    public static LayerShard Parse(string text)
    {
        var parts = text.Split('/');
        if (parts.Length != 2 || !int.TryParse(parts[0], out var index) || !int.TryParse(parts[1], out var count) || count < 1 || index < 0 || index >= count)
            throw new ArgumentException($"--shard '{text}' is not I/N with 0 ≤ I < N (e.g. 0/4 for the first of four shards)");
        return new LayerShard(index, count);
    }

    /// <summary>This shard's block of <paramref name="alignedLayers"/>.</summary>
    public IReadOnlyList<int> Layers(IReadOnlyList<int> alignedLayers)
    {
        if (Count > alignedLayers.Count)
            throw new InvalidInputException(null, $"shard {this}: the student has {alignedLayers.Count} aligned layer(s), so at most {alignedLayers.Count} shards");
        var (size, larger) = (alignedLayers.Count / Count, alignedLayers.Count % Count);
        var start = Index * size + Math.Min(Index, larger);
        return alignedLayers.Skip(start).Take(size + (Index < larger ? 1 : 0)).ToArray();
    }

    /// <summary>The shard's folder name under the stage's <c>shards/</c>.</summary>
    public string FolderName => $"{Index}-of-{Count}";

    public override string ToString() => $"{Index}/{Count}";
}

/// <summary>What a finished shard trained, written beside its weights (<c>shard.json</c>) and checked by the merge.</summary>
public sealed record ShardManifest
{
    public required string Stage { get; init; }
    public required int Shard { get; init; }
    public required int ShardCount { get; init; }
    /// <summary>The layers this shard trained, and all the stage aligns (the loss's divisor).</summary>
    public required IReadOnlyList<int> Layers { get; init; }
    public required IReadOnlyList<int> AlignedLayers { get; init; }
    public required long Steps { get; init; }
    public required long Tokens { get; init; }
    public required double ElapsedSeconds { get; init; }
    /// <summary>SHA-256 of the run's recipe text: seed, data and stage settings all come from it.</summary>
    public required string RecipeSha256 { get; init; }
    public required IReadOnlyList<string> Parameters { get; init; }
}

/// <summary>
/// The files of an alignment stage run as shards:
/// <code>
///   RUN/NN-STAGE/shards/I-of-N/            one folder per shard job: metrics.jsonl, loss.png, checkpoints/
///   RUN/NN-STAGE/shards/I-of-N/result/     weights.safetensors (the shard's trained parameters), shard.json, checksums.sha256
/// </code>
/// and the merge's checks: every shard of one split present, finished, intact, and trained from this run's recipe
/// on the layers its index names. Every parameter outside the shards' layers is the stage's input, unchanged — in a
/// joint run those receive no gradient either.
/// </summary>
public static class AlignmentShards
{
    public const string ShardsFolder = "shards", ResultFolder = "result", ManifestFile = "shard.json";
    static readonly string[] ResultFiles = [StageCheckpoints.WeightsFile, ManifestFile];
    static readonly Regex ShardName = new(@"^(\d+)-of-(\d+)$", RegexOptions.CultureInvariant);
    static readonly Regex LayerPrefix = new(@"^model\.layers\.(\d+)\.", RegexOptions.CultureInvariant);

    static readonly JsonSerializerOptions Json = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals };

    public static string Folder(string stageFolder, LayerShard shard) => Path.Combine(stageFolder, ShardsFolder, shard.FolderName);

    /// <summary>The decoder layer a parameter belongs to (<c>model.layers.N.…</c>), or null for embeddings, final norm and head.</summary>
    public static int? LayerOf(string parameterName) =>
        LayerPrefix.Match(parameterName) is { Success: true } m ? int.Parse(m.Groups[1].Value) : null;

    /// <summary>True when the shard folder holds a committed result (its integrity is the merge's to check).</summary>
    public static bool IsFinished(string shardFolder) => File.Exists(Path.Combine(shardFolder, ResultFolder, StageCheckpoints.ChecksumFile));

    /// <summary>Writes <c>result/</c> in one rename: the trained parameters, the manifest, their checksums.</summary>
    public static string WriteResult(string shardFolder, ShardManifest manifest, IReadOnlyList<(string Name, Parameter Parameter)> trained)
    {
        var final = Path.Combine(shardFolder, ResultFolder);
        using var folder = AtomicDirectory.CreateReplacingOwn(final);
        SafeTensorsWriter.Write(Path.Combine(folder.Path, StageCheckpoints.WeightsFile), trained.Select(p => KeyValuePair.Create(p.Name, (Tensor)p.Parameter)));
        AtomicFile.WriteAllText(Path.Combine(folder.Path, ManifestFile), JsonSerializer.Serialize(manifest, Json) + "\n");
        StageCheckpoints.WriteChecksums(folder.Path, ResultFiles);
        folder.Commit();
        return final;
    }

    /// <summary>
    /// The finished shards of <paramref name="stageFolder"/> in index order, each checked against what this run's
    /// stage would have trained; throws <see cref="InvalidInputException"/> naming the first problem.
    /// </summary>
    public static IReadOnlyList<(ShardManifest Manifest, string Folder)> ReadFinished(string stageFolder, StageRecipe stage, IReadOnlyList<int> alignedLayers, string recipeSha256)
    {
        var root = Path.Combine(stageFolder, ShardsFolder);
        var found = Directory.Exists(root)
            ? Directory.GetDirectories(root).Select(d => (Path: d, Match: ShardName.Match(Path.GetFileName(d)))).Where(d => d.Match.Success)
                .Select(d => (d.Path, Shard: new LayerShard(int.Parse(d.Match.Groups[1].Value), int.Parse(d.Match.Groups[2].Value)))).ToList()
            : [];
        if (found.Count == 0)
            throw new InvalidInputException(root, $"holds no shard of stage '{stage.Name}'; run the shard jobs (--stage {stage.Name} --shard I/N) before merging");
        var counts = found.Select(f => f.Shard.Count).Distinct().Order().ToArray();
        if (counts.Length > 1)
            throw new InvalidInputException(root, $"holds shards of different splits ({string.Join(", ", counts.Select(c => $"of {c}"))}); keep the folders of one split and delete the others");
        var count = counts[0];

        var shards = new List<(ShardManifest, string)>();
        for (var index = 0; index < count; index++)
        {
            var shard = new LayerShard(index, count);
            var folder = Folder(stageFolder, shard);
            if (!Directory.Exists(folder))
                throw new InvalidInputException(folder, $"is missing: shard {shard} of stage '{stage.Name}' has not run (--shard {shard})");
            var result = Path.Combine(folder, ResultFolder);
            if (!IsFinished(folder))
                throw new InvalidInputException(folder, $"shard {shard} has not finished (no {ResultFolder}/); continue it with --shard {shard} --resume");
            if (StageCheckpoints.ChecksumProblem(result, ResultFiles) is { } problem)
                throw new InvalidInputException(result, $"shard {shard}'s result is damaged ({problem}); run the shard again");
            var manifest = ReadManifest(Path.Combine(result, ManifestFile));
            var expectedLayers = shard.Layers(alignedLayers);
            var mismatch =
                manifest.RecipeSha256 != recipeSha256 ? "was trained from another recipe than this run's recipe.yaml"
                : manifest.Stage != stage.Name ? $"belongs to stage '{manifest.Stage}'"
                : manifest.Shard != index || manifest.ShardCount != count ? $"says it is shard {manifest.Shard}/{manifest.ShardCount}"
                : !manifest.AlignedLayers.SequenceEqual(alignedLayers) ? $"aligned layers [{string.Join(", ", manifest.AlignedLayers)}], the student has [{string.Join(", ", alignedLayers)}]"
                : !manifest.Layers.SequenceEqual(expectedLayers) ? $"trained layers [{string.Join(", ", manifest.Layers)}]; shard {shard} is layers [{string.Join(", ", expectedLayers)}]"
                : manifest.Steps != stage.TotalSteps ? $"ran {manifest.Steps} steps; the stage has {stage.TotalSteps}"
                : manifest.Parameters.FirstOrDefault(p => LayerOf(p) is not { } l || !expectedLayers.Contains(l)) is { } stray ? $"holds parameter '{stray}', outside its layers"
                : null;
            if (mismatch is not null) throw new InvalidInputException(Path.Combine(result, ManifestFile), $"shard {shard} does not fit this run: it {mismatch}");
            shards.Add((manifest, folder));
        }
        return shards;
    }

    /// <summary>Copies each shard's trained parameters into <paramref name="student"/> (which holds the stage's input).</summary>
    public static void LoadWeights(IEnumerable<(ShardManifest Manifest, string Folder)> shards, CombaForCausalLM student)
    {
        var parameters = student.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        using var noGrad = no_grad();
        foreach (var (manifest, folder) in shards)
        {
            var path = Path.Combine(folder, ResultFolder, StageCheckpoints.WeightsFile);
            using var weights = Checkpoint.Open(path);
            foreach (var name in manifest.Parameters)
            {
                if (!parameters.TryGetValue(name, out var parameter))
                    throw new InvalidInputException(path, $"parameter '{name}' is not in the student");
                using var value = weights.Read(name, parameter.dtype, parameter.device);
                if (!value.shape.SequenceEqual(parameter.shape))
                    throw new InvalidInputException(path, $"parameter '{name}' has shape [{string.Join(", ", value.shape)}]; the student's is [{string.Join(", ", parameter.shape)}]");
                parameter.copy_(value);
            }
        }
    }

    /// <summary>
    /// The shards' logged steps as the joint run logs them: losses and gradient norms combine (a shard's loss is its
    /// layers' share of the mean, a gradient norm its layers' part of the whole), layer losses concatenate in layer
    /// order; speed is the slowest shard's and time the longest.
    /// </summary>
    public static IReadOnlyList<TrainMetrics> MergeTrainMetrics(IReadOnlyList<(ShardManifest Manifest, string Folder)> shards)
    {
        var logs = shards.Select(s => (s.Folder, StageMetrics.Read(Path.Combine(s.Folder, StageMetrics.FileName)).Train)).ToArray();
        var steps = logs[0].Train.Select(m => m.Step).ToArray();
        foreach (var (folder, train) in logs)
            if (!train.Select(m => m.Step).SequenceEqual(steps))
                throw new InvalidInputException(Path.Combine(folder, StageMetrics.FileName), $"does not log the same steps as {Path.Combine(logs[0].Folder, StageMetrics.FileName)}");
        return Enumerable.Range(0, steps.Length).Select(i =>
        {
            var rows = logs.Select(l => l.Train[i]).ToArray();
            return new TrainMetrics(rows[0].Step, rows[0].Tokens, rows.Sum(r => r.Loss), rows[0].LearningRate, Math.Sqrt(rows.Sum(r => r.GradNorm * r.GradNorm)),
                rows.Min(r => r.TokensPerSecond), rows.Max(r => r.ElapsedSeconds),
                rows.All(r => r.LayerLosses is not null) ? rows.SelectMany(r => r.LayerLosses!).ToArray() : null);
        }).ToArray();
    }

    static ShardManifest ReadManifest(string path)
    {
        try
        {
            return JsonSerializer.Deserialize<ShardManifest>(File.ReadAllText(path), Json) ?? throw new InvalidInputException(path, "empty shard manifest");
        }
        catch (JsonException e)
        {
            throw new InvalidInputException(path, $"not a shard manifest ({e.Message})", e);
        }
    }
}
