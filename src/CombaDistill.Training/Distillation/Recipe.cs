using CombaDistill.Modeling.Comba;

namespace CombaDistill.Distillation;

/// <summary>
/// A distillation run as written in a recipe YAML file (schema: docs/recipes.md). Paths are absolute, resolved
/// against the recipe's folder. Built only by <see cref="RecipeLoader"/>, which validates every field before any
/// work starts.
/// </summary>
public sealed record Recipe
{
    /// <summary>The recipe file, for messages.</summary>
    public required string SourcePath { get; init; }

    /// <summary>Seeds the student's initialisation, the data shuffling and torch's generator.</summary>
    public long Seed { get; init; } = 1234;

    public required TeacherSource Teacher { get; init; }
    public required StudentSource Student { get; init; }
    public required DataRecipe Data { get; init; }
    public required IReadOnlyList<StageRecipe> Stages { get; init; }
    /// <summary>The student's arithmetic while it trains (<see cref="Distillation.Precision"/>); auto: bf16 on CUDA, float32 on the CPU.</summary>
    public Precision Precision { get; init; } = Precision.Auto;
}

/// <summary>
/// The teacher: a Hugging Face folder, or a llama2.c checkpoint plus its tokenizer that the run imports into
/// <c>RUN/teacher</c> first.
/// </summary>
public sealed record TeacherSource
{
    public string? Folder { get; init; }
    public string? Llama2cCheckpoint { get; init; }
    public string? Llama2cTokenizer { get; init; }
}

/// <summary>The student: an already converted folder, or conversion options the run applies to the teacher.</summary>
public sealed record StudentSource
{
    public string? Folder { get; init; }

    /// <summary>Comba layer options for converting the teacher (used when <see cref="Folder"/> is null); the converter's defaults.</summary>
    public CombaConfig Comba { get; init; } = Conversion.ConversionOptions.DefaultComba;

    /// <summary>Layers that keep the teacher's softmax attention (a hybrid student).</summary>
    public IReadOnlyList<int> AttentionLayers { get; init; } = [];

    /// <summary>
    /// The baseline: the converted architecture with every weight freshly initialised from the seed (nothing taken
    /// from the teacher), for training from scratch on the same tokens.
    /// </summary>
    public bool FromScratch { get; init; }
}

public enum DataFormat { Text, Jsonl, Tokens }

/// <summary>One data file; <see cref="MaxTokens"/> keeps only the first tokens of its packed stream.</summary>
public sealed record DataSource(string Path, DataFormat Format, long? MaxTokens = null);

public sealed record DataRecipe
{
    public required DataSource Train { get; init; }

    /// <summary>Held-out text; when null the last <see cref="HoldoutFraction"/> of the training stream is held out.</summary>
    public DataSource? Validation { get; init; }

    public double HoldoutFraction { get; init; } = 0.05;

    /// <summary>Text and JSONL only: each document becomes [BOS] tokens [EOS] before packing.</summary>
    public bool AddBos { get; init; } = true;
    public bool AddEos { get; init; } = true;

    /// <summary>Plain text only: what separates documents (default a blank line); "" reads the file as one document.</summary>
    public string DocumentSeparator { get; init; } = "\n\n";

    /// <summary>Validation tokens scored at each stage's eval interval (the final evaluation uses them all).</summary>
    public long EvalTokens { get; init; } = 8192;
}

/// <summary>What a stage minimises. The order is the order stages may appear in a recipe.</summary>
public enum Objective
{
    /// <summary>Per layer, ‖y_teacher − y_student‖²/d of the attention outputs from the teacher's hidden states.</summary>
    AttentionAlignment,
    /// <summary>T²·KL(teacher ‖ student) on logits at temperature T, optionally plus cross-entropy.</summary>
    Distillation,
    /// <summary>Next-token cross-entropy, optionally plus KL, usually at a longer context.</summary>
    FineTuning,
}

/// <summary>
/// Which parameters a stage trains: <c>comba</c> the Comba layers' new tensors (gates, λ, d, convolutions, norms);
/// <c>attention</c> everything under a converted layer's self_attn; <c>all</c> the whole student; <c>none</c> no
/// weight of the student (a stage that trains only its LoRA adapters); or glob patterns over state_dict names
/// (<c>*</c> any run of characters).
/// </summary>
public sealed record TrainableSelection(string Preset, IReadOnlyList<string> Patterns)
{
    public static readonly string[] Presets = ["comba", "attention", "all", "none"];
    public static TrainableSelection Of(string preset) => new(preset, []);
    public override string ToString() => Patterns.Count > 0 ? string.Join(", ", Patterns) : Preset;
}

/// <summary>AdamW with decoupled weight decay; the decay applies to matrices only, never to biases, norms or gates.</summary>
public sealed record OptimizerRecipe
{
    public double LearningRate { get; init; } = 1e-3;
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.95;
    public double Epsilon { get; init; } = 1e-8;
    /// <summary>Explicit: TorchSharp's AdamW defaults to 0, PyTorch's to 0.01.</summary>
    public double WeightDecay { get; init; } = 0.0;
}

/// <summary>
/// Low-rank adapters (LoRA, Hu et al. 2021) on the student's projections for one stage: each target
/// <c>nn.Linear</c> W gains y = W x + (alpha / rank) · B A dropout(x), with A (rank × in) random and B (out × rank)
/// zero, so the stage starts from exactly its input student. Only A and B train (plus whatever the stage's
/// <c>trainable</c> selects besides the targets); at the stage's end B A is merged into W, so the result is a
/// normal student folder.
/// </summary>
public sealed record LoraRecipe
{
    /// <summary>Projection names that may carry an adapter: attention (and Comba) q/k/v/o and the MLP's three.</summary>
    public static readonly string[] Projections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    public static readonly string[] AttentionProjections = ["q_proj", "k_proj", "v_proj", "o_proj"];

    public int Rank { get; init; } = 8;
    /// <summary>The update is scaled by alpha / rank, so changing the rank does not change the learning rate that works.</summary>
    public double Alpha { get; init; } = 16;
    /// <summary>Dropout on the adapter's input while training (0 = none).</summary>
    public double Dropout { get; init; }
    /// <summary>Which projections get adapters, in every layer (names from <see cref="Projections"/>).</summary>
    public IReadOnlyList<string> Targets { get; init; } = AttentionProjections;

    public double Scale => Alpha / Rank;
}

public enum ScheduleKind { Cosine, Constant }

/// <summary>Linear warmup from 0 to the peak learning rate, then cosine decay to <see cref="MinLearningRate"/> or constant.</summary>
public sealed record ScheduleRecipe
{
    public ScheduleKind Kind { get; init; } = ScheduleKind.Cosine;
    public long WarmupSteps { get; init; }
    public double MinLearningRate { get; init; }
}

public sealed record StageRecipe
{
    /// <summary>Folder-safe name, unique in the recipe.</summary>
    public required string Name { get; init; }
    public required Objective Objective { get; init; }
    public required TrainableSelection Trainable { get; init; }
    /// <summary>LoRA adapters trained in this stage and merged at its end; null for none.</summary>
    public LoraRecipe? Lora { get; init; }
    public OptimizerRecipe Optimizer { get; init; } = new();
    public ScheduleRecipe Schedule { get; init; } = new();

    /// <summary>Exactly one budget: tokens (rounded up to whole optimizer steps) or optimizer steps.</summary>
    public long? Tokens { get; init; }
    public long? Steps { get; init; }

    public int SequenceLength { get; init; } = 256;
    public int MicroBatch { get; init; } = 8;
    public int Accumulation { get; init; } = 1;

    /// <summary>Maximum global gradient norm; null (<c>none</c> in YAML) = no clipping.</summary>
    public double? GradClip { get; init; } = 1.0;

    public double Temperature { get; init; } = 1.0;
    public double KlWeight { get; init; }
    public double CeWeight { get; init; }

    /// <summary>Sequence positions per chunk of logits in the KL/CE loss: B × chunk × vocab are held at a time.</summary>
    public int LossChunk { get; init; } = 64;

    public int LogEvery { get; init; } = 10;
    public int EvalEvery { get; init; } = 100;
    public int CheckpointEvery { get; init; } = 100;

    /// <summary>Checkpoints kept per stage (the newest ones); older ones are deleted.</summary>
    public int KeepCheckpoints { get; init; } = 3;

    /// <summary>
    /// Optimizer steps in a row whose loss or gradient norm is not finite that are skipped (no update) before the stage
    /// stops with an error; 0 stops at the first.
    /// </summary>
    public int MaxNonFiniteSteps { get; init; } = 5;
    /// <summary>
    /// Recompute each student layer's activations in the backward pass instead of keeping them (<see cref="ActivationCheckpoint"/>):
    /// less memory, about one more forward of the student per step.
    /// </summary>
    public bool ActivationCheckpointing { get; init; }

    /// <summary>Where a stage leaves them out: the weight of the loss its objective is named for is 1, the other 0.</summary>
    public static (double Kl, double Ce) DefaultWeights(Objective objective) =>
        (objective == Objective.Distillation ? 1.0 : 0.0, objective == Objective.FineTuning ? 1.0 : 0.0);

    /// <summary>
    /// Where a stage leaves it out: with LoRA only the adapters train; otherwise an attention_alignment stage trains the
    /// converted layers' attention and the later stages the whole student.
    /// </summary>
    public static TrainableSelection DefaultTrainable(Objective objective, bool hasLora) =>
        TrainableSelection.Of(hasLora ? "none" : objective == Objective.AttentionAlignment ? "attention" : "all");

    public long TokensPerStep => (long)SequenceLength * MicroBatch * Accumulation;

    /// <summary>Optimizer steps this stage runs.</summary>
    public long TotalSteps => Steps ?? (Tokens!.Value + TokensPerStep - 1) / TokensPerStep;
}
