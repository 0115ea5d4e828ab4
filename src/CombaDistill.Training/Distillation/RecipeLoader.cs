using CombaDistill.Conversion;
using CombaDistill.IO;
using CombaDistill.Modeling.Comba;
using CombaDistill.Modeling.Llama;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace CombaDistill.Distillation;

/// <summary>
/// Reads a recipe YAML file into a <see cref="Recipe"/> and checks all of it — unknown fields, ranges, the order of
/// stages, that every file it names exists, that the teacher's architecture admits the stages — so a bad recipe
/// fails in the first second with an <see cref="InvalidInputException"/> naming the file, line and field.
/// </summary>
public static class RecipeLoader
{
    // The defaults live on the records (Recipe.cs); a field the YAML leaves out takes the record's own default.
    static readonly Recipe Defaults = new()
    {
        SourcePath = "", Teacher = new(), Student = new(), Stages = [],
        Data = new DataRecipe { Train = new DataSource("", DataFormat.Text) },
    };
    static readonly StageRecipe StageDefaults = new() { Name = "", Objective = Objective.AttentionAlignment, Trainable = TrainableSelection.Of("comba") };
    static readonly ScheduleRecipe ScheduleDefaults = new();

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

    public static Recipe Load(string path)
    {
        return Parse(InputFile.ReadAllText(path, "recipe file", maxBytes: 16L << 20), path);
    }

    /// <summary>Parses recipe text; <paramref name="path"/> names it in errors and anchors relative paths.</summary>
    public static Recipe Parse(string yaml, string path)
    {
        var stream = new YamlStream();
        try
        {
            stream.Load(new StringReader(yaml));
        }
        catch (YamlException e)
        {
            throw new InvalidInputException(path, $"line {e.Start.Line}: not valid YAML ({Bounded.Text(e.Message, 160)})", e);
        }
        catch (InvalidOperationException e)
        {
            // YamlDotNet's scanner throws this, not a YamlException, on some malformed flow collections ("seed: {")
            throw new InvalidInputException(path, "not valid YAML (an unclosed '{' or '[' or a misplaced ':'?)", e);
        }
        if (stream.Documents.Count != 1 || stream.Documents[0].RootNode is not YamlMappingNode root)
            throw new InvalidInputException(path, "a recipe is one YAML mapping with teacher, student, data and stages");

        var fields = new YamlFields(root, path, "");
        var recipe = new Recipe
        {
            SourcePath = Path.GetFullPath(path),
            Seed = fields.Integer("seed") ?? Defaults.Seed,
            Teacher = ReadTeacher(fields),
            Student = ReadStudent(fields),
            Data = ReadData(fields),
            Stages = ReadStages(fields),
            Precision = fields.Choice("precision", Precisions) ?? Defaults.Precision,
        };
        fields.RejectUnknown();
        CheckAgainstTeacher(recipe, fields);
        return recipe;
    }

    static TeacherSource ReadTeacher(YamlFields root)
    {
        if (!root.Has("teacher")) throw root.Error("teacher", "is missing: give 'teacher: {path: FOLDER}' or 'teacher: {llama2c: FILE.bin, tokenizer: FILE}'");
        var teacher = root.Mapping("teacher")!;
        var source = new TeacherSource
        {
            Folder = teacher.PathValue("path"),
            Llama2cCheckpoint = teacher.PathValue("llama2c"),
            Llama2cTokenizer = teacher.PathValue("tokenizer"),
        };
        teacher.RejectUnknown();
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

    static StudentSource ReadStudent(YamlFields root)
    {
        var student = root.Mapping("student");
        if (student is null) return new StudentSource();
        var folder = student.PathValue("path");
        var convert = student.Mapping("convert");
        if (folder is not null && convert is not null) throw student.Error("convert", "cannot be given together with 'student.path'");
        if (folder is not null && !File.Exists(Path.Combine(folder, "config.json")))
            throw student.Error("path", $"names {folder}, which is not a model folder (no config.json)");
        var source = new StudentSource { Folder = folder, FromScratch = student.Bool("from_scratch") ?? false };
        if (source.FromScratch && folder is not null) throw student.Error("from_scratch", "applies to a converted student ('student.convert'), not to 'student.path'");
        if (convert is not null)
        {
            var defaults = ConversionOptions.DefaultComba;
            var comba = new CombaConfig
            {
                Rotary = convert.String("rotary") ?? defaults.Rotary,
                ShortConv = convert.Int32("short_conv") ?? defaults.ShortConv,
                OutputNorm = convert.Bool("output_norm") ?? defaults.OutputNorm,
                ChunkSize = convert.Int32("chunk_size") ?? defaults.ChunkSize,
                Scale = convert.Number("scale") ?? defaults.Scale,
                InitialD = convert.Number("initial_d") ?? defaults.InitialD,
                InitialLambda = convert.Number("initial_lambda") ?? defaults.InitialLambda,
                NormEps = convert.Number("norm_eps") ?? defaults.NormEps,
                FeatureMap = convert.String("feature_map") ?? defaults.FeatureMap,
                NormalizeReadout = convert.Bool("normalize_readout") ?? defaults.NormalizeReadout,
                ReadoutEps = convert.Number("readout_eps") ?? defaults.ReadoutEps,
            };
            var layers = convert.List("attention_layers")?.Select(n => n is YamlScalarNode s && int.TryParse(s.Value, out var i) && i >= 0 ? i
                : throw convert.Error(n, convert.PathOf("attention_layers"), $"holds '{n}'; expected layer indices")).ToArray() ?? [];
            convert.RejectUnknown();
            try
            {
                comba.Validated();
            }
            catch (InvalidInputException e)
            {
                // CombaConfig names its config.json field (comba_rotary); say it the recipe's way.
                throw new InvalidInputException(root.File, $"line {convert.Line}: in 'student.convert': {e.Message.Replace(CombaConfig.Prefix, "")}");
            }
            source = source with { Comba = comba, AttentionLayers = layers };
        }
        student.RejectUnknown();
        return source;
    }

    static DataRecipe ReadData(YamlFields root)
    {
        if (!root.Has("data")) throw root.Error("data", "is missing: give at least 'data: {train: FILE}'");
        var data = root.Mapping("data")!;
        var train = ReadSource(data, "train") ?? throw data.Error("train", "is missing (the training text)");
        var recipe = new DataRecipe
        {
            Train = train,
            Validation = ReadSource(data, "validation"),
            HoldoutFraction = data.Number("holdout_fraction") ?? Defaults.Data.HoldoutFraction,
            AddBos = data.Bool("add_bos") ?? Defaults.Data.AddBos,
            AddEos = data.Bool("add_eos") ?? Defaults.Data.AddEos,
            DocumentSeparator = data.String("document_separator") is { } separator ? Unescape(separator) : Defaults.Data.DocumentSeparator,
            EvalTokens = data.Integer("eval_tokens") ?? Defaults.Data.EvalTokens,
        };
        data.RejectUnknown();
        if (recipe.Validation is null && !(recipe.HoldoutFraction > 0 && recipe.HoldoutFraction < 0.5))
            throw data.Error("holdout_fraction", $"is {recipe.HoldoutFraction}; expected a fraction in (0, 0.5) when no validation file is given");
        if (recipe.EvalTokens <= 0) throw data.Error("eval_tokens", $"is {recipe.EvalTokens}; expected a positive number");
        return recipe;
    }

    /// <summary>Either a bare path (format from the extension) or {path, format, max_tokens}.</summary>
    static DataSource? ReadSource(YamlFields data, string key)
    {
        if (!data.Has(key)) return null;
        string file;
        DataFormat? format = null;
        long? maxTokens = null;
        if (data.Raw(key) is YamlMappingNode)
        {
            var source = data.Mapping(key)!;
            file = source.PathValue("path") ?? throw source.Error("path", "is missing (the data file)");
            format = source.Choice("format", Formats);
            maxTokens = source.Integer("max_tokens");
            if (maxTokens is <= 1) throw source.Error("max_tokens", $"is {maxTokens}; expected at least 2");
            source.RejectUnknown();
        }
        else
        {
            file = data.PathValue(key)!;
        }
        if (!File.Exists(file)) throw data.Error(key, $"names {file}, which does not exist");
        format ??= Path.GetExtension(file).ToLowerInvariant() switch
        {
            ".jsonl" => DataFormat.Jsonl,
            ".tokens" or ".bin" => DataFormat.Tokens,
            _ => DataFormat.Text,
        };
        return new DataSource(file, format.Value, maxTokens);
    }

    static IReadOnlyList<StageRecipe> ReadStages(YamlFields root)
    {
        var items = root.List("stages");
        if (items is null || items.Count == 0) throw root.Error("stages", "is missing or empty: a recipe needs at least one stage");
        var stages = new List<StageRecipe>();
        for (var i = 0; i < items.Count; i++)
        {
            var path = $"stages[{i}]";
            if (items[i] is not YamlMappingNode node) throw root.Error(items[i], path, "must be a mapping");
            var stage = ReadStage(new YamlFields(node, root.File, path));
            if (stages.Any(s => s.Name == stage.Name))
                throw root.Error(node, $"{path}.name", $"is '{stage.Name}', which an earlier stage already uses");
            if (stages.Count > 0 && stages[^1].Objective > stage.Objective)
                throw root.Error(node, $"{path}.objective",
                    $"is {NameOf(stage.Objective)} after {NameOf(stages[^1].Objective)}: stages run in the order attention_alignment, distillation, fine_tuning");
            stages.Add(stage);
        }
        return stages;
    }

    static StageRecipe ReadStage(YamlFields s)
    {
        var name = s.String("name") ?? throw s.Error("name", "is missing");
        if (name.Length == 0 || name.Length > 64 || !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_'))
            throw s.Error("name", $"is '{name}'; use letters, digits, '-' and '_' (it names the stage's folder)");
        var objective = s.Choice("objective", Objectives) ?? throw s.Error("objective", $"is missing; one of {string.Join(", ", Objectives.Keys)}");

        var lora = ReadLora(s, objective);
        var trainable = ReadTrainable(s, objective, lora is not null);
        var optimizer = ReadOptimizer(s);
        var schedule = ReadSchedule(s, optimizer);
        var stage = new StageRecipe
        {
            Name = name,
            Objective = objective,
            Trainable = trainable,
            Lora = lora,
            Optimizer = optimizer,
            Schedule = schedule,
            Tokens = s.Integer("tokens"),
            Steps = s.Integer("steps"),
            SequenceLength = s.Int32("sequence_length") ?? StageDefaults.SequenceLength,
            MicroBatch = s.Int32("micro_batch") ?? StageDefaults.MicroBatch,
            Accumulation = s.Int32("accumulation") ?? StageDefaults.Accumulation,
            GradClip = s.String("grad_clip") == "none" ? null : s.Number("grad_clip") ?? StageDefaults.GradClip,
            Temperature = s.Number("temperature") ?? StageDefaults.Temperature,
            KlWeight = s.Number("kl_weight") ?? (objective == Objective.Distillation ? 1.0 : 0.0),
            CeWeight = s.Number("ce_weight") ?? (objective == Objective.FineTuning ? 1.0 : 0.0),
            LossChunk = s.Int32("loss_chunk") ?? StageDefaults.LossChunk,
            LogEvery = s.Int32("log_every") ?? StageDefaults.LogEvery,
            EvalEvery = s.Int32("eval_every") ?? StageDefaults.EvalEvery,
            CheckpointEvery = s.Int32("checkpoint_every") ?? StageDefaults.CheckpointEvery,
            KeepCheckpoints = s.Int32("keep_checkpoints") ?? StageDefaults.KeepCheckpoints,
            MaxNonFiniteSteps = s.Int32("max_nonfinite_steps") ?? StageDefaults.MaxNonFiniteSteps,
            ActivationCheckpointing = s.Bool("activation_checkpointing") ?? StageDefaults.ActivationCheckpointing,
        };
        s.RejectUnknown();

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
            foreach (var logitField in new[] { "kl_weight", "ce_weight", "temperature" })
                if (s.Has(logitField)) throw s.Error(logitField, "applies to logits; attention_alignment compares attention outputs");
        }
        else if (stage.KlWeight + stage.CeWeight == 0)
        {
            throw s.Error("kl_weight", "and 'ce_weight' are both 0: the stage would have nothing to minimise");
        }
        if (schedule.WarmupSteps >= stage.TotalSteps && stage.TotalSteps > 1)
            throw s.Error("schedule", $"warms up for {schedule.WarmupSteps} steps but the stage runs only {stage.TotalSteps}");
        return stage;
    }

    static TrainableSelection ReadTrainable(YamlFields s, Objective objective, bool hasLora)
    {
        // With LoRA the adapters train; the student's own weights only where the stage says so.
        var fallback = hasLora ? "none" : objective == Objective.AttentionAlignment ? "attention" : "all";
        if (!s.Has("trainable")) return TrainableSelection.Of(fallback);
        if (s.Raw("trainable") is YamlSequenceNode)
        {
            var patterns = s.List("trainable")!.Select(n => n is YamlScalarNode { Value: { Length: > 0 } p } ? p
                : throw s.Error(n, s.PathOf("trainable"), "must list name patterns such as 'model.layers.*.self_attn.*'")).ToArray();
            if (patterns.Length == 0) throw s.Error("trainable", "is an empty list: nothing would train");
            if (objective == Objective.AttentionAlignment && patterns.Any(p => !p.Contains("self_attn")))
                throw s.Error("trainable", "may only name self_attn parameters in an attention_alignment stage");
            return new TrainableSelection("patterns", patterns);
        }
        var preset = s.String("trainable")!;
        if (!TrainableSelection.Presets.Contains(preset))
            throw s.Error("trainable", $"is '{preset}'; expected one of {string.Join(", ", TrainableSelection.Presets)} or a list of name patterns");
        if (objective == Objective.AttentionAlignment && preset == "all")
            throw s.Error("trainable", "is 'all', but attention_alignment trains only attention-side parameters (comba or attention)");
        if (preset == "none" && !hasLora)
            throw s.Error("trainable", "is 'none', which trains nothing without a 'lora' block");
        return TrainableSelection.Of(preset);
    }

    static LoraRecipe? ReadLora(YamlFields s, Objective objective)
    {
        if (!s.Has("lora")) return null;
        if (s.Raw("lora") is not YamlMappingNode) throw s.Error("lora", "must be a mapping such as {rank: 8, alpha: 16, targets: [q_proj, k_proj, v_proj, o_proj]}");
        var l = s.Mapping("lora")!;
        var defaults = new LoraRecipe();
        var targets = l.List("targets")?.Select(n => n is YamlScalarNode { Value: { } t } && LoraRecipe.Projections.Contains(t) ? t
            : throw l.Error(n, l.PathOf("targets"), $"holds '{n}'; expected projection names from {string.Join(", ", LoraRecipe.Projections)}")).ToArray();
        var lora = new LoraRecipe
        {
            Rank = l.Int32("rank") ?? defaults.Rank,
            Alpha = l.Number("alpha") ?? defaults.Alpha,
            Dropout = l.Number("dropout") ?? defaults.Dropout,
            Targets = targets ?? defaults.Targets,
        };
        l.RejectUnknown();
        if (lora.Rank <= 0) throw l.Error("rank", $"is {lora.Rank}; expected a positive number (typically 4 to 64)");
        if (!(lora.Alpha > 0) || double.IsInfinity(lora.Alpha)) throw l.Error("alpha", $"is {lora.Alpha}; expected a positive number");
        if (!(lora.Dropout >= 0 && lora.Dropout < 1)) throw l.Error("dropout", $"is {lora.Dropout}; expected a probability in [0, 1)");
        if (lora.Targets.Count == 0) throw l.Error("targets", "is an empty list: no projection would get an adapter");
        if (lora.Targets.Distinct().Count() != lora.Targets.Count) throw l.Error("targets", "names a projection twice");
        if (objective == Objective.AttentionAlignment && lora.Targets.FirstOrDefault(t => !LoraRecipe.AttentionProjections.Contains(t)) is { } mlp)
            throw l.Error("targets", $"names {mlp}, but attention_alignment trains only attention-side parameters ({string.Join(", ", LoraRecipe.AttentionProjections)})");
        return lora;
    }

    static OptimizerRecipe ReadOptimizer(YamlFields s)
    {
        var o = s.Mapping("optimizer");
        if (o is null) return new OptimizerRecipe();
        var defaults = new OptimizerRecipe();
        var betas = o.List("betas");
        double beta1 = defaults.Beta1, beta2 = defaults.Beta2;
        if (betas is not null)
        {
            if (betas.Count != 2) throw o.Error("betas", "must be a list of two numbers, e.g. [0.9, 0.95]");
            beta1 = ParseBeta(o, betas[0]);
            beta2 = ParseBeta(o, betas[1]);
        }
        var recipe = new OptimizerRecipe
        {
            LearningRate = o.Number("lr") ?? defaults.LearningRate,
            Beta1 = beta1,
            Beta2 = beta2,
            Epsilon = o.Number("eps") ?? defaults.Epsilon,
            WeightDecay = o.Number("weight_decay") ?? defaults.WeightDecay,
        };
        o.RejectUnknown();
        if (!(recipe.LearningRate > 0)) throw o.Error("lr", $"is {recipe.LearningRate}; expected a positive learning rate");
        if (!(recipe.Epsilon > 0)) throw o.Error("eps", $"is {recipe.Epsilon}; expected a positive number");
        if (recipe.WeightDecay < 0) throw o.Error("weight_decay", $"is {recipe.WeightDecay}; expected ≥ 0");
        return recipe;
    }

    static double ParseBeta(YamlFields o, YamlNode node) =>
        node is YamlScalarNode { Value: { } text } && double.TryParse(text, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var beta) && beta >= 0 && beta < 1
            ? beta
            : throw o.Error(node, o.PathOf("betas"), $"holds '{node}'; each beta must be in [0, 1)");

    static ScheduleRecipe ReadSchedule(YamlFields s, OptimizerRecipe optimizer)
    {
        var schedule = s.Mapping("schedule");
        if (schedule is null) return new ScheduleRecipe();
        var recipe = new ScheduleRecipe
        {
            Kind = schedule.Choice("kind", Schedules) ?? ScheduleDefaults.Kind,
            WarmupSteps = schedule.Integer("warmup_steps") ?? ScheduleDefaults.WarmupSteps,
            MinLearningRate = schedule.Number("min_lr") ?? ScheduleDefaults.MinLearningRate,
        };
        schedule.RejectUnknown();
        if (recipe.WarmupSteps < 0) throw schedule.Error("warmup_steps", $"is {recipe.WarmupSteps}; expected ≥ 0");
        if (recipe.MinLearningRate < 0 || recipe.MinLearningRate > optimizer.LearningRate)
            throw schedule.Error("min_lr", $"is {recipe.MinLearningRate}; expected between 0 and the stage's lr ({optimizer.LearningRate})");
        return recipe;
    }

    static void Positive(YamlFields s, string key, long value)
    {
        if (value <= 0) throw s.Error(key, $"is {value}; expected a positive number");
    }

    static string Unescape(string separator) => separator.Replace("\\n", "\n").Replace("\\t", "\t");

    /// <summary>The teacher's architecture, read without loading weights: config.json, or a llama2.c header.</summary>
    public static LlamaConfig TeacherArchitecture(TeacherSource teacher) =>
        teacher.Folder is not null ? LlamaConfig.Load(Path.Combine(teacher.Folder, "config.json"))
        : Llama2cImporter.ReadHeader(teacher.Llama2cCheckpoint!).ToConfig();

    static void CheckAgainstTeacher(Recipe recipe, YamlFields root)
    {
        var architecture = TeacherArchitecture(recipe.Teacher);
        foreach (var layer in recipe.Student.AttentionLayers)
            if (layer >= architecture.NumHiddenLayers)
                throw new InvalidInputException(root.File, $"field 'student.convert.attention_layers' names layer {layer}, but the teacher has layers 0 … {architecture.NumHiddenLayers - 1}");
        if (recipe.Student.Folder is null && recipe.Student.AttentionLayers.Count == architecture.NumHiddenLayers)
            throw new InvalidInputException(root.File, "field 'student.convert.attention_layers' keeps every layer as attention: nothing would be converted");
        for (var i = 0; i < recipe.Stages.Count; i++)
        {
            var stage = recipe.Stages[i];
            var usesTeacher = stage.Objective == Objective.AttentionAlignment || stage.KlWeight > 0;
            if (usesTeacher && stage.SequenceLength > architecture.MaxPositionEmbeddings)
                throw new InvalidInputException(root.File,
                    $"field 'stages[{i}].sequence_length' is {stage.SequenceLength}, beyond the teacher's context of {architecture.MaxPositionEmbeddings} tokens (only a pure cross-entropy stage may go longer)");
        }
    }
}
