using System.Text.Json;
using System.Text.Json.Nodes;
using CombaDistill.IO;
using CombaDistill.Ops;

namespace CombaDistill.Modeling.Comba;

/// <summary>
/// The options of a Comba attention layer that change its numerics. Each is written to the student's
/// config.json as a <c>comba_*</c> field, so a checkpoint reloads exactly without flags.
/// </summary>
public sealed record CombaConfig
{
    public const string Prefix = "comba_";
    public static readonly string[] RotaryModes = ["none", "teacher"];
    public static readonly int[] ShortConvKernels = [0, 4];
    public static readonly string[] FeatureMaps = ["identity", "taylor"];

    /// <summary>"none", or "teacher": apply the teacher's rotary embedding to q and k before the recurrence.</summary>
    public string Rotary { get; init; } = "none";

    /// <summary>Kernel of the depthwise causal convolution on q, k and v; 0 = none. Identity-initialised.</summary>
    public int ShortConv { get; init; } = 4;

    /// <summary>Per-head RMSNorm on the recurrence output before o_proj (one weight of head_dim shared by the heads).</summary>
    public bool OutputNorm { get; init; }

    public int ChunkSize { get; init; } = 64;

    /// <summary>
    /// Output scale s. 1.0, not 1/√d_k: q̂ and k̂ are unit vectors, so q̂·k̂ ∈ [−1, 1] already, and with s = 1 the read-out
    /// o ≈ Σ β (q̂·k̂) v starts on the scale of the teacher's attention output (a weighted mean of v) that o_proj expects.
    /// The distillation experiments decide whether another default is better.
    /// </summary>
    public double Scale { get; init; } = 1.0;

    /// <summary>Initial output correction d (o = s · S (q̂ − d k̂)); small so the student starts near a plain read-out.</summary>
    public double InitialD { get; init; } = 0.02;

    /// <summary>Initial λ = σ(b) in (0, 1): how strongly the write subtracts what the state already predicts for k̂.</summary>
    public double InitialLambda { get; init; } = 0.5;

    public double NormEps { get; init; } = 1e-6;

    /// <summary>
    /// What q and k become (after rotary) before the recurrence: "identity" keeps their head_dim features; "taylor"
    /// (<see cref="TaylorFeatureMap"/>) expands them to 1 + D + D(D+1)/2, so each head's state holds that many keys and
    /// its read-out is quadratic in q.
    /// </summary>
    public string FeatureMap { get; init; } = "identity";

    /// <summary>
    /// Divide each head's read-out by the read-out of a constant-one value channel, o ← o / (|z| + <see cref="ReadoutEps"/>):
    /// the state is linear in the values, so z is the sum of the weights the read-out gives the stored values, and
    /// the output becomes their weighted average, as softmax attention's is. Adds one value channel to the state.
    /// </summary>
    public bool NormalizeReadout { get; init; }

    /// <summary>ε of the normalised read-out: keeps it finite where the weights sum to about zero.</summary>
    public double ReadoutEps { get; init; } = 0.1;

    /// <summary>Features per head that q and k have in the recurrence (Dk).</summary>
    public int KeyDim(int headDim) => FeatureMap == "taylor" ? TaylorFeatureMap.Dimension(headDim) : headDim;

    /// <summary>Value channels per head in the recurrence (Dv): head_dim, plus the normaliser's.</summary>
    public int ValueDim(int headDim) => headDim + (NormalizeReadout ? 1 : 0);

    /// <summary>Throws <see cref="InvalidInputException"/> naming <paramref name="path"/> and the field.</summary>
    public CombaConfig Validated(string? path = null)
    {
        if (!RotaryModes.Contains(Rotary)) Bad(path, "rotary", $"is '{Rotary}'; expected one of {string.Join(", ", RotaryModes)}");
        if (!ShortConvKernels.Contains(ShortConv)) Bad(path, "short_conv", $"is {ShortConv}; expected 0 (none) or 4");
        if (!ChunkwiseComba.SupportedChunkSizes.Contains(ChunkSize)) Bad(path, "chunk_size", $"is {ChunkSize}; expected one of {string.Join(", ", ChunkwiseComba.SupportedChunkSizes)}");
        if (!(Scale > 0) || double.IsInfinity(Scale)) Bad(path, "scale", $"is {Scale}; expected a positive number");
        if (!double.IsFinite(InitialD)) Bad(path, "initial_d", $"is {InitialD}; expected a finite number");
        if (!(InitialLambda > 0 && InitialLambda < 1)) Bad(path, "initial_lambda", $"is {InitialLambda}; expected a number in (0, 1)");
        if (!(NormEps > 0)) Bad(path, "norm_eps", $"is {NormEps}; expected a positive number");
        if (!FeatureMaps.Contains(FeatureMap)) Bad(path, "feature_map", $"is '{FeatureMap}'; expected one of {string.Join(", ", FeatureMaps)}");
        if (!(ReadoutEps > 0) || double.IsInfinity(ReadoutEps)) Bad(path, "readout_eps", $"is {ReadoutEps}; expected a positive number");
        return this;
    }

    static void Bad(string? path, string field, string problem) =>
        throw new InvalidInputException(path, $"field '{Prefix}{field}' {problem}");

    /// <summary>Adds every comba_* field to <paramref name="config"/> (e.g. the student's config.json) and returns it.</summary>
    public JsonObject WriteTo(JsonObject config)
    {
        foreach (var (name, value) in JsonSerializer.SerializeToNode(this, JsonOptions)!.AsObject()) config[name] = value?.DeepClone();
        return config;
    }

    public JsonObject ToJson() => WriteTo(new JsonObject());

    /// <summary>Reads the comba_* fields of a config.json; a missing field takes its default, a malformed one is an error.</summary>
    public static CombaConfig FromJson(JsonObject j, string path) => JsonConfig.Bind<CombaConfig>(j, path, JsonOptions).Validated(path);

    /// <summary>Each property is the snake_case field with the comba_ prefix (ChunkSize ↔ comba_chunk_size).</summary>
    static readonly JsonSerializerOptions JsonOptions = JsonConfig.Options(new PrefixedSnakeCase());

    sealed class PrefixedSnakeCase : JsonNamingPolicy
    {
        public override string ConvertName(string name) => Prefix + SnakeCaseLower.ConvertName(name);
    }
}
