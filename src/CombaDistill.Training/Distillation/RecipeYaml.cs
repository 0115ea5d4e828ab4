using YamlDotNet.Serialization;

namespace CombaDistill.Distillation;

// A recipe file as written (schema: docs/recipes.md), bound by YamlBinder: every field is null where the file leaves
// it out. RecipeLoader's validation pass checks these and builds the Recipe, whose records hold the defaults.

sealed class RecipeYaml : YamlRecord
{
    public long? Seed { get; init; }
    public Precision? Precision { get; init; }
    public TeacherYaml? Teacher { get; init; }
    public StudentYaml? Student { get; init; }
    public DataYaml? Data { get; init; }
    public IReadOnlyList<StageYaml>? Stages { get; init; }
}

sealed class TeacherYaml : YamlRecord
{
    public string? Path { get; init; }
    public string? Llama2c { get; init; }
    public string? Tokenizer { get; init; }
}

sealed class StudentYaml : YamlRecord
{
    public string? Path { get; init; }
    public ConvertYaml? Convert { get; init; }
    public bool? FromScratch { get; init; }
}

/// <summary>The Comba layer options (CombaConfig's fields without the comba_ prefix) and the layers kept as attention.</summary>
sealed class ConvertYaml : YamlRecord
{
    public string? Rotary { get; init; }
    public int? ShortConv { get; init; }
    public bool? OutputNorm { get; init; }
    public int? ChunkSize { get; init; }
    public double? Scale { get; init; }
    public double? InitialD { get; init; }
    public double? InitialLambda { get; init; }
    public double? NormEps { get; init; }
    public string? FeatureMap { get; init; }
    public bool? NormalizeReadout { get; init; }
    public double? ReadoutEps { get; init; }
    public IReadOnlyList<int>? AttentionLayers { get; init; }
}

sealed class DataYaml : YamlRecord
{
    public SourceYaml? Train { get; init; }
    public SourceYaml? Validation { get; init; }
    public double? HoldoutFraction { get; init; }
    public bool? AddBos { get; init; }
    public bool? AddEos { get; init; }
    public string? DocumentSeparator { get; init; }
    public long? EvalTokens { get; init; }
}

/// <summary>A data file: its path alone (the format from its extension), or {path, format, max_tokens}.</summary>
sealed class SourceYaml : YamlRecord, YamlBinder.IScalarShorthand
{
    public string? Path { get; set; }
    public DataFormat? Format { get; init; }
    public long? MaxTokens { get; init; }
    /// <summary>True when the file gave only the path.</summary>
    [YamlIgnore] public bool PathOnly { get; private set; }

    public void FromScalar(string value) => (Path, PathOnly) = (value, true);
}

sealed class StageYaml : YamlRecord
{
    public string? Name { get; init; }
    public Objective? Objective { get; init; }
    /// <summary>A preset name or a list of name patterns.</summary>
    public YamlBinder.NameOrList? Trainable { get; init; }
    public LoraYaml? Lora { get; init; }
    public OptimizerYaml? Optimizer { get; init; }
    public ScheduleYaml? Schedule { get; init; }
    public long? Tokens { get; init; }
    public long? Steps { get; init; }
    public int? SequenceLength { get; init; }
    public int? MicroBatch { get; init; }
    public int? Accumulation { get; init; }
    /// <summary>A number, or <c>none</c> for no clipping.</summary>
    public string? GradClip { get; init; }
    public double? Temperature { get; init; }
    public double? KlWeight { get; init; }
    public double? CeWeight { get; init; }
    public int? LossChunk { get; init; }
    public int? LogEvery { get; init; }
    public int? EvalEvery { get; init; }
    public int? CheckpointEvery { get; init; }
    public int? KeepCheckpoints { get; init; }
    [YamlMember(Alias = "max_nonfinite_steps")]
    public int? MaxNonFiniteSteps { get; init; }
    public bool? ActivationCheckpointing { get; init; }
}

sealed class LoraYaml : YamlRecord
{
    public int? Rank { get; init; }
    public double? Alpha { get; init; }
    public double? Dropout { get; init; }
    public IReadOnlyList<string>? Targets { get; init; }
}

sealed class OptimizerYaml : YamlRecord
{
    public double? Lr { get; init; }
    /// <summary>Two numbers, β1 and β2.</summary>
    public IReadOnlyList<double>? Betas { get; init; }
    public double? Eps { get; init; }
    public double? WeightDecay { get; init; }
}

sealed class ScheduleYaml : YamlRecord
{
    public ScheduleKind? Kind { get; init; }
    public long? WarmupSteps { get; init; }
    public double? MinLr { get; init; }
}
