using System.Text.RegularExpressions;
using CombaDistill.Conversion;
using CombaDistill.IO;
using CombaDistill.Modeling.Comba;
using CombaDistill.Modeling.Llama;
using YamlDotNet.Core;

namespace CombaDistill.Distillation;

/// <summary>
/// Reads a recipe YAML file into a <see cref="Recipe"/> and checks all of it, so a bad recipe fails in the first second
/// with an <see cref="InvalidInputException"/> naming the file, line and field. YamlDotNet's deserializer binds the
/// file onto the file-shaped records of RecipeYaml.cs (<see cref="YamlBinder"/>: unknown fields, types and the
/// scalar grammar); then one validation pass checks ranges, the order of stages, that every file it names exists and
/// that the teacher's architecture admits the stages, and builds the recipe with the defaults of Recipe.cs.
/// </summary>
public static partial class RecipeLoader
{
    internal static readonly Dictionary<string, Precision> Precisions = new()
    {
        ["auto"] = Precision.Auto,
        ["bf16"] = Precision.BFloat16,
        ["float32"] = Precision.Float32,
    };

    static readonly Dictionary<string, Objective> Objectives = new()
    {
        ["attention_alignment"] = Objective.AttentionAlignment,
        ["distillation"] = Objective.Distillation,
        ["fine_tuning"] = Objective.FineTuning,
    };

    static readonly Dictionary<string, DataFormat> Formats = new()
    {
        ["text"] = DataFormat.Text,
        ["jsonl"] = DataFormat.Jsonl,
        ["tokens"] = DataFormat.Tokens,
    };

    static readonly Dictionary<string, ScheduleKind> Schedules = new()
    {
        ["cosine"] = ScheduleKind.Cosine,
        ["constant"] = ScheduleKind.Constant,
    };

    public static string NameOf(Objective objective) => Objectives.First(o => o.Value == objective).Key;

    /// <summary>The names each enum of a recipe takes.</summary>
    static readonly Dictionary<Type, IReadOnlyDictionary<string, object>> Choices = new()
    {
        [typeof(Precision)] = Precisions.ToDictionary(p => p.Key, p => (object)p.Value),
        [typeof(Objective)] = Objectives.ToDictionary(p => p.Key, p => (object)p.Value),
        [typeof(DataFormat)] = Formats.ToDictionary(p => p.Key, p => (object)p.Value),
        [typeof(ScheduleKind)] = Schedules.ToDictionary(p => p.Key, p => (object)p.Value),
    };

    public static Recipe Load(string path)
    {
        return Parse(InputFile.ReadAllText(path, "recipe file", maxBytes: 16L << 20), path);
    }

    /// <summary>Parses recipe text; <paramref name="path"/> names it in errors and anchors relative paths.</summary>
    public static Recipe Parse(string yaml, string path)
    {
        RecipeYaml? file;
        try
        {
            file = new YamlBinder(path, Choices).Bind<RecipeYaml>(yaml);
        }
        catch (YamlException e) when (e.InnerException is not InvalidOperationException)
        {
            // what a deserializer threw comes wrapped in "Exception during deserialization"
            throw new InvalidInputException(path, $"line {e.Start.Line}: not valid YAML ({Bounded.Text(e.InnerException?.Message ?? e.Message, 160)})", e);
        }
        catch (Exception e) when (e is InvalidOperationException or YamlException)
        {
            // YamlDotNet's scanner throws this, not a YamlException, on some malformed flow collections ("seed: {")
            throw new InvalidInputException(path, "not valid YAML (an unclosed '{' or '[' or a misplaced ':'?)", e);
        }
        if (file is null) throw new InvalidInputException(path, "a recipe is one YAML mapping with teacher, student, data and stages");
        return Validate(file);
    }

    /// <summary>
    /// The one check of a bound recipe, building the <see cref="Recipe"/> as it goes: ranges, rules between fields,
    /// the files it names, and the teacher's architecture against the stages. A field the file leaves out takes the
    /// default of the record it fills.
    /// </summary>
    static Recipe Validate(RecipeYaml file)
    {
        var defaults = new Recipe
        {
            SourcePath = "", Teacher = new(), Student = new(), Stages = [],
            Data = new DataRecipe { Train = new DataSource("", DataFormat.Text) },
        };
        var recipe = new Recipe
        {
            SourcePath = Path.GetFullPath(file.File),
            Seed = file.Seed ?? defaults.Seed,
            Teacher = ReadTeacher(file),
            Student = ReadStudent(file.Student),
            Data = ReadData(file),
            Stages = ReadStages(file),
            Precision = file.Precision ?? defaults.Precision,
        };
        CheckAgainstTeacher(recipe, file.File);
        return recipe;
    }

    static TeacherSource ReadTeacher(RecipeYaml file)
    {
        var teacher = file.Teacher ?? throw file.Error("teacher", "is missing: give 'teacher: {path: FOLDER}' or 'teacher: {llama2c: FILE.bin, tokenizer: FILE}'");
        var source = new TeacherSource
        {
            Folder = ResolvePath(teacher, "path", teacher.Path),
            Llama2cCheckpoint = ResolvePath(teacher, "llama2c", teacher.Llama2c),
            Llama2cTokenizer = ResolvePath(teacher, "tokenizer", teacher.Tokenizer),
        };
        if ((source.Folder is null) == (source.Llama2cCheckpoint is null))
            throw teacher.Error("path", "or 'teacher.llama2c': give exactly one of them");
        if (source.Folder is not null)
        {
            if (source.Llama2cTokenizer is not null) throw teacher.Error("tokenizer", "is only for a llama2.c checkpoint; a folder holds its own tokenizer");
            if (!Directory.Exists(source.Folder)) throw teacher.Error("path", $"names {source.Folder}, which does not exist");
            if (!File.Exists(Path.Combine(source.Folder, "config.json"))) throw teacher.Error("path", $"names {source.Folder}, which has no config.json");
        }
        else
        {
            if (!File.Exists(source.Llama2cCheckpoint)) throw teacher.Error("llama2c", $"names {source.Llama2cCheckpoint}, which does not exist");
            if (source.Llama2cTokenizer is null) throw teacher.Error("tokenizer", "is missing: a llama2.c checkpoint needs its tokenizer.bin");
            if (!File.Exists(source.Llama2cTokenizer)) throw teacher.Error("tokenizer", $"names {source.Llama2cTokenizer}, which does not exist");
        }
        return source;
    }

    static StudentSource ReadStudent(StudentYaml? student)
    {
        if (student is null) return new StudentSource();
        var folder = ResolvePath(student, "path", student.Path);
        var convert = student.Convert;
        if (folder is not null && convert is not null) throw student.Error("convert", "cannot be given together with 'student.path'");
        if (folder is not null && !File.Exists(Path.Combine(folder, "config.json")))
            throw student.Error("path", $"names {folder}, which is not a model folder (no config.json)");
        var source = new StudentSource { Folder = folder, FromScratch = student.FromScratch ?? false };
        if (source.FromScratch && folder is not null) throw student.Error("from_scratch", "applies to a converted student ('student.convert'), not to 'student.path'");
        if (convert is null) return source;

        var defaults = new StudentSource().Comba;
        var comba = new CombaConfig
        {
            Rotary = convert.Rotary ?? defaults.Rotary,
            ShortConv = convert.ShortConv ?? defaults.ShortConv,
            OutputNorm = convert.OutputNorm ?? defaults.OutputNorm,
            ChunkSize = convert.ChunkSize ?? defaults.ChunkSize,
            Scale = convert.Scale ?? defaults.Scale,
            InitialD = convert.InitialD ?? defaults.InitialD,
            InitialLambda = convert.InitialLambda ?? defaults.InitialLambda,
            NormEps = convert.NormEps ?? defaults.NormEps,
            FeatureMap = convert.FeatureMap ?? defaults.FeatureMap,
            NormalizeReadout = convert.NormalizeReadout ?? defaults.NormalizeReadout,
            ReadoutEps = convert.ReadoutEps ?? defaults.ReadoutEps,
        };
        var layers = convert.AttentionLayers ?? [];
        foreach (var layer in layers)
            if (layer < 0) throw convert.Error("attention_layers", $"holds '{layer}'; expected layer indices");
        try
        {
            comba.Validated();
        }
        catch (InvalidInputException e)
        {
            // CombaConfig names its config.json field (comba_rotary); say it the recipe's way.
            throw new InvalidInputException(convert.File, $"line {convert.Line}: in 'student.convert': {e.Message.Replace(CombaConfig.Prefix, "")}");
        }
        return source with { Comba = comba, AttentionLayers = layers };
    }

    static DataRecipe ReadData(RecipeYaml file)
    {
        var data = file.Data ?? throw file.Error("data", "is missing: give at least 'data: {train: FILE}'");
        var defaults = new DataRecipe { Train = new DataSource("", DataFormat.Text) };
        var recipe = new DataRecipe
        {
            Train = ReadSource(data, "train", data.Train) ?? throw data.Error("train", "is missing (the training text)"),
            Validation = ReadSource(data, "validation", data.Validation),
            HoldoutFraction = data.HoldoutFraction ?? defaults.HoldoutFraction,
            AddBos = data.AddBos ?? defaults.AddBos,
            AddEos = data.AddEos ?? defaults.AddEos,
            DocumentSeparator = data.DocumentSeparator is { } separator ? Unescape(separator) : defaults.DocumentSeparator,
            EvalTokens = data.EvalTokens ?? defaults.EvalTokens,
        };
        if (recipe.Validation is null && !(recipe.HoldoutFraction > 0 && recipe.HoldoutFraction < 0.5))
            throw data.Error("holdout_fraction", $"is {recipe.HoldoutFraction}; expected a fraction in (0, 0.5) when no validation file is given");
        if (recipe.EvalTokens <= 0) throw data.Error("eval_tokens", $"is {recipe.EvalTokens}; expected a positive number");
        return recipe;
    }

    /// <summary>Either a bare path (format from the extension) or {path, format, max_tokens}.</summary>
    static DataSource? ReadSource(DataYaml data, string key, SourceYaml? source)
    {
        if (source is null) return null;
        var file = source.PathOnly ? ResolvePath(data, key, source.Path)! : ResolvePath(source, "path", source.Path) ?? throw source.Error("path", "is missing (the data file)");
        if (source.MaxTokens is <= 1) throw source.Error("max_tokens", $"is {source.MaxTokens}; expected at least 2");
        if (!File.Exists(file)) throw data.Error(key, $"names {file}, which does not exist");
        var format = source.Format ?? Path.GetExtension(file).ToLowerInvariant() switch
        {
            ".jsonl" => DataFormat.Jsonl,
            ".tokens" or ".bin" => DataFormat.Tokens,
            _ => DataFormat.Text,
        };
        return new DataSource(file, format, source.MaxTokens);
    }

    static IReadOnlyList<StageRecipe> ReadStages(RecipeYaml file)
    {
        if (file.Stages is not { Count: > 0 } items) throw file.Error("stages", "is missing or empty: a recipe needs at least one stage");
        var stages = new List<StageRecipe>();
        foreach (var item in items)
        {
            var stage = ReadStage(item);
            if (stages.Any(s => s.Name == stage.Name))
                throw item.Error("name", $"is '{stage.Name}', which an earlier stage already uses");
            if (stages.Count > 0 && stages[^1].Objective > stage.Objective)
                throw item.Error("objective",
                    $"is {NameOf(stage.Objective)} after {NameOf(stages[^1].Objective)}: stages run in the order attention_alignment, distillation, fine_tuning");
            stages.Add(stage);
        }
        return stages;
    }

    static StageRecipe ReadStage(StageYaml s)
    {
        var name = s.Name ?? throw s.Error("name", "is missing");
        if (name.Length == 0 || name.Length > 64 || !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_'))
            throw s.Error("name", $"is '{name}'; use letters, digits, '-' and '_' (it names the stage's folder)");
        var objective = s.Objective ?? throw s.Error("objective", $"is missing; one of {string.Join(", ", Objectives.Keys)}");

        var defaults = new StageRecipe { Name = "", Objective = objective, Trainable = TrainableSelection.Of("comba") };
        var lora = ReadLora(s, objective);
        var optimizer = ReadOptimizer(s.Optimizer);
        var schedule = ReadSchedule(s.Schedule, optimizer);
        var stage = new StageRecipe
        {
            Name = name,
            Objective = objective,
            Trainable = ReadTrainable(s, objective, lora is not null),
            Lora = lora,
            Optimizer = optimizer,
            Schedule = schedule,
            Tokens = s.Tokens,
            Steps = s.Steps,
            SequenceLength = s.SequenceLength ?? defaults.SequenceLength,
            MicroBatch = s.MicroBatch ?? defaults.MicroBatch,
            Accumulation = s.Accumulation ?? defaults.Accumulation,
            GradClip = s.GradClip switch
            {
                null => defaults.GradClip,
                "none" => null,
                var text => YamlBinder.Number(text) ?? throw s.Error("grad_clip", $"is '{text}'; expected a number"),
            },
            Temperature = s.Temperature ?? defaults.Temperature,
            KlWeight = s.KlWeight ?? StageRecipe.DefaultWeights(objective).Kl,
            CeWeight = s.CeWeight ?? StageRecipe.DefaultWeights(objective).Ce,
            LossChunk = s.LossChunk ?? defaults.LossChunk,
            LogEvery = s.LogEvery ?? defaults.LogEvery,
            EvalEvery = s.EvalEvery ?? defaults.EvalEvery,
            CheckpointEvery = s.CheckpointEvery ?? defaults.CheckpointEvery,
            KeepCheckpoints = s.KeepCheckpoints ?? defaults.KeepCheckpoints,
            MaxNonFiniteSteps = s.MaxNonFiniteSteps ?? defaults.MaxNonFiniteSteps,
            ActivationCheckpointing = s.ActivationCheckpointing ?? defaults.ActivationCheckpointing,
        };

        if ((stage.Tokens is null) == (stage.Steps is null)) throw s.Error("tokens", "or 'steps': give exactly one budget");
        if (stage.Tokens is <= 0) throw s.Error("tokens", $"is {stage.Tokens}; expected a positive number");
        if (stage.Steps is <= 0) throw s.Error("steps", $"is {stage.Steps}; expected a positive number");
        Positive(s, "sequence_length", stage.SequenceLength);
        Positive(s, "micro_batch", stage.MicroBatch);
        Positive(s, "accumulation", stage.Accumulation);
        Positive(s, "loss_chunk", stage.LossChunk);
        Positive(s, "log_every", stage.LogEvery);
        Positive(s, "eval_every", stage.EvalEvery);
        Positive(s, "checkpoint_every", stage.CheckpointEvery);
        Positive(s, "keep_checkpoints", stage.KeepCheckpoints);
        if (stage.MaxNonFiniteSteps < 0) throw s.Error("max_nonfinite_steps", $"is {stage.MaxNonFiniteSteps}; expected ≥ 0");
        if (stage.ActivationCheckpointing && stage.Lora is { Dropout: > 0 })
            throw s.Error("activation_checkpointing", "cannot be combined with LoRA dropout: the recomputed forward would draw other dropout masks than the first one; set lora.dropout to 0");
        if (stage.GradClip is <= 0) throw s.Error("grad_clip", $"is {stage.GradClip}; expected a positive number, or none for no clipping");
        if (!(stage.Temperature > 0)) throw s.Error("temperature", $"is {stage.Temperature}; expected a positive number");
        if (stage.KlWeight < 0) throw s.Error("kl_weight", $"is {stage.KlWeight}; expected ≥ 0");
        if (stage.CeWeight < 0) throw s.Error("ce_weight", $"is {stage.CeWeight}; expected ≥ 0");
        if (objective == Objective.AttentionAlignment)
        {
            foreach (var (field, value) in new[] { ("kl_weight", s.KlWeight), ("ce_weight", s.CeWeight), ("temperature", s.Temperature) })
                if (value is not null) throw s.Error(field, "applies to logits; attention_alignment compares attention outputs");
        }
        else if (stage.KlWeight + stage.CeWeight == 0)
        {
            throw s.Error("kl_weight", "and 'ce_weight' are both 0: the stage would have nothing to minimise");
        }
        if (schedule.WarmupSteps >= stage.TotalSteps && stage.TotalSteps > 1)
            throw s.Error("schedule", $"warms up for {schedule.WarmupSteps} steps but the stage runs only {stage.TotalSteps}");
        return stage;
    }

    static TrainableSelection ReadTrainable(StageYaml s, Objective objective, bool hasLora)
    {
        if (s.Trainable is null) return StageRecipe.DefaultTrainable(objective, hasLora);
        if (s.Trainable.List is { } patterns)
        {
            if (patterns.Any(p => p.Length == 0)) throw s.Error("trainable", "must list name patterns such as 'model.layers.*.self_attn.*'");
            if (patterns.Count == 0) throw s.Error("trainable", "is an empty list: nothing would train");
            if (objective == Objective.AttentionAlignment && patterns.Any(p => !p.Contains("self_attn")))
                throw s.Error("trainable", "may only name self_attn parameters in an attention_alignment stage");
            return new TrainableSelection("patterns", patterns);
        }
        var preset = s.Trainable.Name!;
        if (!TrainableSelection.Presets.Contains(preset))
            throw s.Error("trainable", $"is '{preset}'; expected one of {string.Join(", ", TrainableSelection.Presets)} or a list of name patterns");
        if (objective == Objective.AttentionAlignment && preset == "all")
            throw s.Error("trainable", "is 'all', but attention_alignment trains only attention-side parameters (comba or attention)");
        if (preset == "none" && !hasLora)
            throw s.Error("trainable", "is 'none', which trains nothing without a 'lora' block");
        return TrainableSelection.Of(preset);
    }

    static LoraRecipe? ReadLora(StageYaml s, Objective objective)
    {
        if (s.Lora is not { } l) return null;
        var defaults = new LoraRecipe();
        if (l.Targets?.FirstOrDefault(t => !LoraRecipe.Projections.Contains(t)) is { } unknown)
            throw l.Error("targets", $"holds '{unknown}'; expected projection names from {string.Join(", ", LoraRecipe.Projections)}");
        var lora = new LoraRecipe
        {
            Rank = l.Rank ?? defaults.Rank,
            Alpha = l.Alpha ?? defaults.Alpha,
            Dropout = l.Dropout ?? defaults.Dropout,
            Targets = l.Targets ?? defaults.Targets,
        };
        if (lora.Rank <= 0) throw l.Error("rank", $"is {lora.Rank}; expected a positive number (typically 4 to 64)");
        if (!(lora.Alpha > 0) || double.IsInfinity(lora.Alpha)) throw l.Error("alpha", $"is {lora.Alpha}; expected a positive number");
        if (!(lora.Dropout >= 0 && lora.Dropout < 1)) throw l.Error("dropout", $"is {lora.Dropout}; expected a probability in [0, 1)");
        if (lora.Targets.Count == 0) throw l.Error("targets", "is an empty list: no projection would get an adapter");
        if (lora.Targets.Distinct().Count() != lora.Targets.Count) throw l.Error("targets", "names a projection twice");
        if (objective == Objective.AttentionAlignment && lora.Targets.FirstOrDefault(t => !LoraRecipe.AttentionProjections.Contains(t)) is { } mlp)
            throw l.Error("targets", $"names {mlp}, but attention_alignment trains only attention-side parameters ({string.Join(", ", LoraRecipe.AttentionProjections)})");
        return lora;
    }

    static OptimizerRecipe ReadOptimizer(OptimizerYaml? o)
    {
        var defaults = new OptimizerRecipe();
        if (o is null) return defaults;
        if (o.Betas is { Count: not 2 }) throw o.Error("betas", "must be a list of two numbers, e.g. [0.9, 0.95]");
        foreach (var beta in o.Betas ?? [])
            if (!(beta >= 0 && beta < 1)) throw o.Error("betas", $"holds '{beta}'; each beta must be in [0, 1)");
        var recipe = new OptimizerRecipe
        {
            LearningRate = o.Lr ?? defaults.LearningRate,
            Beta1 = o.Betas?[0] ?? defaults.Beta1,
            Beta2 = o.Betas?[1] ?? defaults.Beta2,
            Epsilon = o.Eps ?? defaults.Epsilon,
            WeightDecay = o.WeightDecay ?? defaults.WeightDecay,
        };
        if (!(recipe.LearningRate > 0)) throw o.Error("lr", $"is {recipe.LearningRate}; expected a positive learning rate");
        if (!(recipe.Epsilon > 0)) throw o.Error("eps", $"is {recipe.Epsilon}; expected a positive number");
        if (recipe.WeightDecay < 0) throw o.Error("weight_decay", $"is {recipe.WeightDecay}; expected ≥ 0");
        return recipe;
    }

    static ScheduleRecipe ReadSchedule(ScheduleYaml? schedule, OptimizerRecipe optimizer)
    {
        var defaults = new ScheduleRecipe();
        if (schedule is null) return defaults;
        var recipe = new ScheduleRecipe
        {
            Kind = schedule.Kind ?? defaults.Kind,
            WarmupSteps = schedule.WarmupSteps ?? defaults.WarmupSteps,
            MinLearningRate = schedule.MinLr ?? defaults.MinLearningRate,
        };
        if (recipe.WarmupSteps < 0) throw schedule.Error("warmup_steps", $"is {recipe.WarmupSteps}; expected ≥ 0");
        if (recipe.MinLearningRate < 0 || recipe.MinLearningRate > optimizer.LearningRate)
            throw schedule.Error("min_lr", $"is {recipe.MinLearningRate}; expected between 0 and the stage's lr ({optimizer.LearningRate})");
        return recipe;
    }

    static void Positive(YamlRecord s, string key, long value)
    {
        if (value <= 0) throw s.Error(key, $"is {value}; expected a positive number");
    }

    static string Unescape(string separator) => separator.Replace("\\n", "\n").Replace("\\t", "\t");

    /// <summary>
    /// A path relative to the recipe's folder; <c>${NAME}</c> and <c>${NAME:-fallback}</c> take environment variables
    /// (e.g. <c>${COMBADISTILL_SHARED:-../shared}</c>, so the same recipe runs on another host).
    /// </summary>
    static string? ResolvePath(YamlRecord owner, string key, string? text)
    {
        if (text is null) return null;
        if (text.Length == 0) throw owner.Error(key, "is empty; expected a path");
        var expanded = EnvironmentReference().Replace(text, m =>
            Environment.GetEnvironmentVariable(m.Groups["name"].Value) is { Length: > 0 } value ? value
            : m.Groups["fallback"].Success ? m.Groups["fallback"].Value
            : throw owner.Error(key, $"uses ${{{m.Groups["name"].Value}}}, which is not set"));
        if (expanded.Contains('\0')) throw owner.Error(key, "holds a NUL character; no path can");
        return Path.GetFullPath(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(owner.File))!, expanded));
    }

    [GeneratedRegex(@"\$\{(?<name>[A-Za-z_][A-Za-z0-9_]*)(:-(?<fallback>[^}]*))?\}")]
    private static partial Regex EnvironmentReference();

    /// <summary>The teacher's architecture, read without loading weights: config.json, or a llama2.c header.</summary>
    public static LlamaConfig TeacherArchitecture(TeacherSource teacher) =>
        teacher.Folder is not null ? LlamaConfig.Load(Path.Combine(teacher.Folder, "config.json"))
        : Llama2cImporter.ReadHeader(teacher.Llama2cCheckpoint!).ToConfig();

    static void CheckAgainstTeacher(Recipe recipe, string path)
    {
        var architecture = TeacherArchitecture(recipe.Teacher);
        foreach (var layer in recipe.Student.AttentionLayers)
            if (layer >= architecture.NumHiddenLayers)
                throw new InvalidInputException(path, $"field 'student.convert.attention_layers' names layer {layer}, but the teacher has layers 0 … {architecture.NumHiddenLayers - 1}");
        if (recipe.Student.Folder is null && recipe.Student.AttentionLayers.Count == architecture.NumHiddenLayers)
            throw new InvalidInputException(path, "field 'student.convert.attention_layers' keeps every layer as attention: nothing would be converted");
        for (var i = 0; i < recipe.Stages.Count; i++)
        {
            var stage = recipe.Stages[i];
            var usesTeacher = stage.Objective == Objective.AttentionAlignment || stage.KlWeight > 0;
            if (usesTeacher && stage.SequenceLength > architecture.MaxPositionEmbeddings)
                throw new InvalidInputException(path,
                    $"field 'stages[{i}].sequence_length' is {stage.SequenceLength}, beyond the teacher's context of {architecture.MaxPositionEmbeddings} tokens (only a pure cross-entropy stage may go longer)");
        }
    }
}
