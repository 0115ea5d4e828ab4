using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Serialization;
using CombaDistill.Conversion;
using CombaDistill.IO;
using CombaDistill.Modeling;
using CombaDistill.Modeling.Comba;
using CombaDistill.Modeling.Llama;
using CombaDistill.Runtime;
using CombaDistill.Runtime.Parallel;
using CombaDistill.Tokenization;
using static TorchSharp.torch;

namespace CombaDistill.Distillation;

/// <summary>How to run a recipe; the recipe says what.</summary>
public sealed record DistillOptions
{
    /// <summary>Continue a run folder: finished stages are kept, an interrupted one continues from its newest intact checkpoint.</summary>
    public bool Resume { get; init; }

    /// <summary>Run only this stage; it needs its predecessor's result in the run folder.</summary>
    public string? OnlyStage { get; init; }

    /// <summary>Where the student trains (and the teacher runs, unless <see cref="TeacherDevices"/> says otherwise); the CPU by default.</summary>
    public Device? Device { get; init; }

    /// <summary>
    /// Devices to split the teacher's layers over, when it does not fit on one (<see cref="LayerPlacement"/>); its
    /// embeddings, final norm and head stay on <see cref="Device"/>, where its outputs are used. Null: all on <see cref="Device"/>.
    /// </summary>
    public IReadOnlyList<Device>? TeacherDevices { get; init; }

    /// <summary>Write TensorBoard event files under RUN/tensorboard.</summary>
    public bool TensorBoard { get; init; } = true;

    /// <summary>
    /// With <see cref="OnlyStage"/> naming an attention_alignment stage: train only this shard's block of layers, as one
    /// of several independent jobs, into RUN/NN-STAGE/shards/I-of-N. The run folder must have been set up
    /// (<see cref="DistillationRun.Prepare"/>): shard jobs only read its inputs.
    /// </summary>
    public LayerShard? Shard { get; init; }

    /// <summary>With <see cref="OnlyStage"/>: make the stage's result from its finished shards instead of training it.</summary>
    public bool MergeShards { get; init; }

    /// <summary>The data-parallel job this process is a rank of; every rank runs the same recipe and options, and only rank 0 writes the run folder.</summary>
    public ProcessGroup Group { get; init; } = ProcessGroup.Single;

    /// <summary>Where each training step's phases are timed (<c>bench distill</c>); null: not timed.</summary>
    public StepPhases? Phases { get; init; }
}

/// <summary>The run's outcome, also written as RUN/summary.json.</summary>
public sealed record RunSummary
{
    public required string RunFolder { get; init; }
    public required string StudentFolder { get; init; }
    public required IReadOnlyList<StageResult> Stages { get; init; }
    /// <summary>Held-out tokens scored for the perplexities (all validation windows at <see cref="EvalSequenceLength"/>).</summary>
    public required long ValidationTokens { get; init; }
    public required int EvalSequenceLength { get; init; }
    public required double TeacherPerplexity { get; init; }
    public required double StudentPerplexity { get; init; }
    public double PerplexityRatio => StudentPerplexity / TeacherPerplexity;
    public required double Seconds { get; init; }
}

/// <summary>
/// Runs a recipe in a run folder:
/// <code>
///   RUN/recipe.yaml            the recipe text the run was started with (a resume must use the same)
///   RUN/teacher/               the imported teacher (llama2.c recipes only)
///   RUN/student-init/          the converted student (recipes with student.convert)
///   RUN/data/*.tokens          the tokenized training and validation streams
///   RUN/NN-STAGE/              per stage: metrics.jsonl, loss.png, checkpoints/, student/ (the stage's result)
///   RUN/NN-STAGE/shards/I-of-N/  an alignment stage run as shard jobs (<see cref="AlignmentShards"/>), merged into student/
///   RUN/tensorboard/STAGE/     TensorBoard event files
///   RUN/student/               the final student, a normal student folder
///   RUN/summary.json
/// </code>
/// Each stage starts from its predecessor's result and refuses to start without it. In a data-parallel job
/// (<see cref="DistillOptions.Group"/>) rank 0 prepares the folder (teacher, student, data) while the others wait,
/// then every rank trains each stage together (<see cref="StageTrainer"/>); rank 0 alone writes results and the summary.
/// </summary>
public static class DistillationRun
{
    public const string RecipeCopy = "recipe.yaml", SummaryFile = "summary.json", FinalStudent = "student";

    static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
    };

    public static string StageFolder(string runFolder, Recipe recipe, int index) => StagePlan.StageFolder(runFolder, recipe, index);

    public static RunSummary Run(Recipe recipe, string runFolder, DistillOptions options, IProgress<DistillationProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        var clock = Stopwatch.StartNew();
        var device = options.Device ?? CPU;
        var group = options.Group;
        var writes = group.Rank == 0;
        OutputPath.RequireFolder(runFolder, "--run-dir");
        runFolder = Path.GetFullPath(runFolder);
        DataParallel.Check(recipe, group.WorldSize);
        StagePlan.CheckShardOptions(recipe, options);
        if (!group.IsSingle && (options.Shard is not null || options.MergeShards))
            throw new ArgumentException("shard jobs and their merge run as single processes; give each shard job its own GPU instead");
        void Note(string text, bool warning = false) => progress?.Report(new DistillationProgress { Stage = "", StageCount = recipe.Stages.Count, Note = text, IsWarning = warning });

        // Data that cannot be read is refused before the run folder is made, so the corrected recipe can start afresh.
        if (writes && !DataTokenized(runFolder)) TokenStreams.Check(recipe.Data);
        // Rank 0 sets the folder up (imports, converts, tokenizes); the others then find everything in place and only read it.
        if (writes) PrepareFolder(recipe, runFolder, continuing: options.Resume || options.OnlyStage is not null);
        if (!writes) group.Barrier();
        var (teacherFolder, initialStudent, trainTokens, validationTokens) = EnsureInputs(recipe, runFolder, Note, cancellationToken);
        if (writes) group.Barrier();
        var recipeSha256 = Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(Path.Combine(runFolder, RecipeCopy))));
        var plan = StagePlan.Decide(recipe, runFolder, initialStudent, options);

        using var teacher = LoadTeacher(teacherFolder, options, device, Note);
        var precision = PrecisionChoice.Resolve(recipe.Precision, device);
        if (precision == Precision.BFloat16) Note("the student trains in bf16 with float32 master weights (precision: bf16)");
        var context = new StageContext(recipe, runFolder, options, device, teacher, trainTokens, validationTokens, recipeSha256, precision, progress);
        var results = new List<StageResult>();
        using (PrecisionChoice.MatmulMode(precision, device))
            results.AddRange(plan.Select(planned => RunStage(context, planned, Note, cancellationToken)));

        var last = Path.Combine(StageFolder(runFolder, recipe, recipe.Stages.Count - 1), StageTrainer.ResultFolder);
        var finalFolder = Path.Combine(runFolder, FinalStudent);
        // The final copy and the held-out scores are rank 0's; the others' summary carries the stages alone.
        if (!writes) return Summarise(runFolder, recipe, results, null, teacher, validationTokens, clock.Elapsed.TotalSeconds, Note);
        if (!StudentFolder.IsComplete(last))
        {
            // --stage ran an earlier stage: the final student is made again when the last stage is.
            DeleteFolder(finalFolder);
            return Summarise(runFolder, recipe, results, null, teacher, validationTokens, clock.Elapsed.TotalSeconds, Note);
        }
        CopyFolder(last, finalFolder);
        return Summarise(runFolder, recipe, results, finalFolder, teacher, validationTokens, clock.Elapsed.TotalSeconds, Note);
    }

    /// <summary>What every stage of a run shares.</summary>
    sealed record StageContext(Recipe Recipe, string RunFolder, DistillOptions Options, Device Device, LlamaForCausalLM Teacher,
        int[] TrainTokens, int[] ValidationTokens, string RecipeSha256, Precision Precision, IProgress<DistillationProgress>? Progress);

    /// <summary>The teacher never trains: bf16 on a GPU to halve its memory, float32 on the CPU where bf16 matmuls are slow.</summary>
    static LlamaForCausalLM LoadTeacher(string teacherFolder, DistillOptions options, Device device, Action<string, bool> note)
    {
        var teacherType = device.type == TorchSharp.DeviceType.CUDA ? ScalarType.BFloat16 : ScalarType.Float32;
        var teacherConfig = LlamaConfig.Load(Path.Combine(teacherFolder, "config.json"));
        var placement = options.TeacherDevices is { Count: > 0 } split
            ? LayerPlacement.Balanced(teacherConfig.NumHiddenLayers, device, split)
            : LayerPlacement.OnOneDevice(teacherConfig.NumHiddenLayers, device);
        if (placement.IsSplit) note($"teacher split by layer: {placement.Describe()}", false);
        return LlamaForCausalLM.FromPretrained(teacherFolder, teacherType, placement);
    }

    /// <summary>Carries out one stage of the plan: keeps a finished one, or trains it (or merges its shards) from its input student.</summary>
    static StageResult RunStage(StageContext c, PlannedStage planned, Action<string, bool> note, CancellationToken cancellationToken)
    {
        var (recipe, options, group) = (c.Recipe, c.Options, c.Options.Group);
        var (i, stage, folder) = (planned.Index, recipe.Stages[planned.Index], planned.Folder);
        if (planned.Action == StageAction.Keep)
        {
            note($"stage '{stage.Name}' already finished; keeping {StagePlan.ResultOf(folder)}", false);
            return ReadStageResult(folder, stage, StagePlan.ResultOf(folder));
        }
        if (planned.Action == StageAction.KeepShard)
        {
            note($"stage '{stage.Name}' shard {options.Shard} already finished; keeping {planned.WorkFolder}", false);
            return ReadStageResult(planned.WorkFolder, stage, Path.Combine(planned.WorkFolder, AlignmentShards.ResultFolder));
        }
        // A stage being (re)done replaces its old result, and the later stages' results, made from the old one, go too.
        for (var later = i; group.Rank == 0 && later < recipe.Stages.Count; later++)
            DeleteFolder(StagePlan.ResultOf(StageFolder(c.RunFolder, recipe, later)));

        if (group.Any(cancellationToken.IsCancellationRequested)) throw new OperationCanceledException(cancellationToken);
        using var student = CombaForCausalLM.FromPretrained(planned.Input, ScalarType.Float32, c.Device);
        var board = stage.Name + (options.Shard is { } s ? $"-shard-{s.FolderName}" : "");
        var trainer = new StageTrainer(new StageInputs
        {
            Stage = stage, StageIndex = i, StageCount = recipe.Stages.Count, Seed = recipe.Seed,
            Teacher = c.Teacher, Student = student, TrainTokens = c.TrainTokens, ValidationTokens = c.ValidationTokens,
            EvalTokens = recipe.Data.EvalTokens, Folder = planned.WorkFolder, TokenizerFolder = planned.Input, Resume = options.Resume,
            TensorBoardFolder = options.TensorBoard ? Path.Combine(c.RunFolder, "tensorboard", board) : null,
            Shard = options.Shard, RecipeSha256 = c.RecipeSha256, Group = group, Precision = c.Precision, Phases = options.Phases,
        }, c.Progress);
        return planned.Action == StageAction.Merge ? trainer.MergeShards() : trainer.Run(cancellationToken);
    }

    /// <summary>
    /// Sets a run folder up without training: the recipe copy, the imported teacher, the converted student and the
    /// tokenized data. Repeating it with the same recipe does nothing. Shard jobs need it done once beforehand: many
    /// of them start at the same time and only read the run's inputs.
    /// </summary>
    public static void Prepare(Recipe recipe, string runFolder, IProgress<DistillationProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        OutputPath.RequireFolder(runFolder, "--run-dir");
        runFolder = Path.GetFullPath(runFolder);
        if (!DataTokenized(runFolder)) TokenStreams.Check(recipe.Data);
        PrepareFolder(recipe, runFolder, continuing: File.Exists(Path.Combine(runFolder, RecipeCopy)));
        EnsureInputs(recipe, runFolder, (text, warning) => progress?.Report(new DistillationProgress { Stage = "", StageCount = recipe.Stages.Count, Note = text, IsWarning = warning }),
            cancellationToken);
    }

    static (string Teacher, string Student, int[] Train, int[] Validation) EnsureInputs(Recipe recipe, string runFolder, Action<string, bool> note, CancellationToken cancellationToken)
    {
        var teacherFolder = EnsureTeacher(recipe, runFolder, note, cancellationToken);
        var initialStudent = EnsureStudent(recipe, runFolder, teacherFolder, note, cancellationToken);
        if (recipe.Student.FromScratch) EnsureScratch(recipe, initialStudent, note);
        // config.json's BOS and EOS win over the tokenizer's own, as generate and eval have them.
        var teacherConfig = Modeling.Llama.LlamaConfig.Load(Path.Combine(teacherFolder, "config.json"));
        var tokenizer = TokenizerLoader.ForModel(teacherFolder, teacherConfig.VocabSize, teacherConfig.BosTokenId, teacherConfig.EosTokenIds[0]);
        var (train, validation) = EnsureData(recipe, runFolder, tokenizer, note, cancellationToken);
        return (teacherFolder, initialStudent, train, validation);
    }

    /// <summary>A new run needs an empty or missing folder; a continued one the same recipe text it was started with.</summary>
    static void PrepareFolder(Recipe recipe, string runFolder, bool continuing)
    {
        var copy = Path.Combine(runFolder, RecipeCopy);
        var text = File.ReadAllText(recipe.SourcePath);
        if (continuing)
        {
            if (!File.Exists(copy)) throw new InvalidInputException(runFolder, $"is not a run folder (no {RecipeCopy}); start the run without --resume or --stage, or set it up with --prepare");
            if (File.ReadAllText(copy) != text)
                throw new InvalidInputException(recipe.SourcePath, $"differs from {copy}, the recipe this run was started with; resume with that recipe, or start a new run folder");
            return;
        }
        if (Directory.Exists(runFolder) && Directory.EnumerateFileSystemEntries(runFolder).Any())
            throw new InvalidInputException(runFolder, "already holds a run; pass --resume to continue it, or choose another --run-dir");
        Directory.CreateDirectory(runFolder);
        AtomicFile.WriteAllText(copy, text);
    }

    static string EnsureTeacher(Recipe recipe, string runFolder, Action<string, bool> note, CancellationToken cancellationToken)
    {
        if (recipe.Teacher.Folder is not null) return recipe.Teacher.Folder;
        var folder = Path.Combine(runFolder, "teacher");
        if (!Directory.Exists(folder))
        {
            note($"importing {recipe.Teacher.Llama2cCheckpoint} into {folder}", false);
            Llama2cImporter.Import(recipe.Teacher.Llama2cCheckpoint!, recipe.Teacher.Llama2cTokenizer!, folder, force: false, cancellationToken: cancellationToken);
        }
        return folder;
    }

    static string EnsureStudent(Recipe recipe, string runFolder, string teacherFolder, Action<string, bool> note, CancellationToken cancellationToken)
    {
        if (recipe.Student.Folder is not null) return recipe.Student.Folder;
        var folder = Path.Combine(runFolder, "student-init");
        if (!Directory.Exists(folder))
        {
            note($"converting the teacher into a Comba student in {folder}", false);
            var keep = recipe.Student.AttentionLayers.Count == 0 ? "none" : string.Join(",", recipe.Student.AttentionLayers);
            CombaConverter.Convert(teacherFolder, folder, new ConversionOptions { Comba = recipe.Student.Comba, KeepAttention = keep }, cancellationToken: cancellationToken);
        }
        return folder;
    }

    /// <summary>Replaces the converted weights by a fresh initialisation (once: a marker file records it).</summary>
    static void EnsureScratch(Recipe recipe, string studentFolder, Action<string, bool> note)
    {
        var marker = Path.Combine(studentFolder, "FROM_SCRATCH");
        if (File.Exists(marker)) return;
        note($"re-initialising every weight of {studentFolder} (from_scratch: the baseline without the teacher's weights)", false);
        var config = CombaStudentConfig.Load(Path.Combine(studentFolder, "config.json"));
        manual_seed(recipe.Seed);
        using var fresh = new CombaForCausalLM(config, ScalarType.Float32);
        StudentFolder.Save(fresh, studentFolder, tokenizerFolder: studentFolder, force: true);   // the tokenizer files are copied before the swap
        AtomicFile.WriteAllText(marker, "weights initialised from the recipe's seed, not converted from the teacher\n");
    }

    static bool DataTokenized(string runFolder) =>
        File.Exists(Path.Combine(runFolder, "data", "train.tokens")) && File.Exists(Path.Combine(runFolder, "data", "validation.tokens"));

    /// <summary>Tokenizes once per run into RUN/data; a resumed run reads the same ids back.</summary>
    static (int[] Train, int[] Validation) EnsureData(Recipe recipe, string runFolder, ITokenizer tokenizer, Action<string, bool> note, CancellationToken cancellationToken)
    {
        var folder = Path.Combine(runFolder, "data");
        var (trainPath, validationPath) = (Path.Combine(folder, "train.tokens"), Path.Combine(folder, "validation.tokens"));
        if (File.Exists(trainPath) && File.Exists(validationPath))
            return (TokenFile.Read(trainPath, tokenizer.VocabSize), TokenFile.Read(validationPath, tokenizer.VocabSize));

        Directory.CreateDirectory(folder);
        note($"tokenizing {recipe.Data.Train.Path}", false);
        var train = TokenStreams.Read(recipe.Data.Train, tokenizer, recipe.Data, cancellationToken);
        int[] validation;
        if (recipe.Data.Validation is { } held)
        {
            note($"tokenizing {held.Path}", false);
            validation = TokenStreams.Read(held, tokenizer, recipe.Data, cancellationToken);
        }
        else
        {
            (train, validation) = TokenStreams.SplitTail(train, recipe.Data.HoldoutFraction);
        }
        TokenFile.Write(validationPath, validation, tokenizer.VocabSize);
        TokenFile.Write(trainPath, train, tokenizer.VocabSize);
        return (train, validation);
    }

    static StageResult ReadStageResult(string folder, StageRecipe stage, string result)
    {
        var metricsPath = Path.Combine(folder, StageMetrics.FileName);
        var (train, evals) = File.Exists(metricsPath) ? StageMetrics.Read(metricsPath) : ([], []);
        var last = train.LastOrDefault();
        return new StageResult(stage.Name, stage.Objective, result, last?.Step ?? 0, last?.Tokens ?? 0, last?.ElapsedSeconds ?? 0,
            evals.FirstOrDefault(e => e.Step == 0), evals.LastOrDefault());
    }

    /// <summary>Perplexity of teacher and final student on every validation window, then RUN/summary.json.</summary>
    static RunSummary Summarise(string runFolder, Recipe recipe, List<StageResult> stages, string? studentFolder, LlamaForCausalLM teacher, int[] validationTokens,
        double seconds, Action<string, bool> note)
    {
        var length = Math.Min(recipe.Stages.Max(s => s.SequenceLength), teacher.Config.MaxPositionEmbeddings);
        double teacherCe = double.NaN, studentCe = double.NaN;
        long scored = 0;
        if (studentFolder is not null)
        {
            note($"scoring teacher and student on the held-out data ({validationTokens.Length:N0} tokens)", false);
            using var student = CombaForCausalLM.FromPretrained(studentFolder, ScalarType.Float32, teacher.Device);
            (teacherCe, scored) = Perplexity.CrossEntropy(teacher, validationTokens, length);
            (studentCe, _) = Perplexity.CrossEntropy(student, validationTokens, length);
        }
        var summary = new RunSummary
        {
            RunFolder = runFolder, StudentFolder = studentFolder ?? "", Stages = stages, ValidationTokens = scored, EvalSequenceLength = length,
            TeacherPerplexity = Math.Exp(teacherCe), StudentPerplexity = Math.Exp(studentCe), Seconds = seconds,
        };
        if (studentFolder is not null) AtomicFile.WriteAllText(Path.Combine(runFolder, SummaryFile), JsonSerializer.Serialize(summary, Json) + "\n");
        return summary;
    }

    /// <summary>Removes a folder if it is there; shard jobs starting together may race to remove the same stale result.</summary>
    static void DeleteFolder(string folder)
    {
        try
        {
            if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
        }
        catch (DirectoryNotFoundException)
        {
        }
    }

    static void CopyFolder(string from, string to)
    {
        using var output = AtomicDirectory.CreateReplacingOwn(to);   // the run's own folder, not a path the user named
        foreach (var file in Directory.EnumerateFiles(from, "*", SearchOption.AllDirectories))
        {
            var target = Path.Combine(output.Path, Path.GetRelativePath(from, file));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(file, target);
        }
        output.Commit();
    }
}
