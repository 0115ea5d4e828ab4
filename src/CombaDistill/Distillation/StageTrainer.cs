using System.Diagnostics;
using CombaDistill.Modeling.Comba;
using CombaDistill.Modeling.Llama;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CombaDistill.Distillation;

/// <summary>What one stage trains on and where it writes; the run builds one per stage.</summary>
public sealed record StageInputs
{
    public required StageRecipe Stage { get; init; }
    public required int StageIndex { get; init; }
    public required int StageCount { get; init; }
    /// <summary>Seeds the stage's data order (with the stage index) and torch's generator.</summary>
    public required long Seed { get; init; }
    public required LlamaForCausalLM Teacher { get; init; }
    public required CombaForCausalLM Student { get; init; }
    /// <summary>Token streams; the stage cuts them at its own sequence length.</summary>
    public required int[] TrainTokens { get; init; }
    public required int[] ValidationTokens { get; init; }
    public required long EvalTokens { get; init; }
    /// <summary>The stage's folder: metrics.jsonl, loss.png, checkpoints/, and the result student/.</summary>
    public required string Folder { get; init; }
    public string? TensorBoardFolder { get; init; }
    /// <summary>Where the tokenizer files for the result folder come from (the stage's input student).</summary>
    public required string TokenizerFolder { get; init; }
    /// <summary>Continue from the newest intact checkpoint in <see cref="Folder"/> if there is one.</summary>
    public bool Resume { get; init; }
}

/// <summary>How a stage went: evaluations before the first and after the last step, and its cost.</summary>
public sealed record StageResult(string Name, Objective Objective, string StudentFolder, long Steps, long Tokens, double Seconds, EvalMetrics? First, EvalMetrics? Last);

/// <summary>
/// Runs one stage: AdamW on the selected parameters, the learning-rate schedule, micro-batches with gradient
/// accumulation and clipping, metrics, evaluations, checkpoints, and at the end the result folder. One dispose scope
/// per optimizer step; cancellation is honoured between steps by saving a checkpoint and throwing
/// <see cref="OperationCanceledException"/>.
/// </summary>
public sealed class StageTrainer
{
    public const string ResultFolder = "student", CheckpointsFolder = "checkpoints", PlotFile = "loss.png";

    readonly StageInputs inputs;
    readonly StageRecipe stage;
    readonly IProgress<DistillationProgress>? progress;
    readonly LlamaForCausalLM teacher;
    readonly CombaForCausalLM student;
    readonly Func<Tensor, Tensor> studentHead, teacherHead;
    readonly IReadOnlyList<int> alignedLayers;
    readonly PackedSequences validation;
    readonly int[] evalWindows;
    readonly bool teacherFitsContext;
    double? teacherEvalCrossEntropy;

    public StageTrainer(StageInputs inputs, IProgress<DistillationProgress>? progress = null)
    {
        this.inputs = inputs;
        stage = inputs.Stage;
        this.progress = progress;
        teacher = inputs.Teacher;
        student = inputs.Student;
        studentHead = LogitLoss.Head(student.lm_head, student.model.embed_tokens.weight);
        teacherHead = LogitLoss.Head(teacher.lm_head, teacher.model.embed_tokens.weight!);
        alignedLayers = AttentionAlignment.ConvertedLayers(student);
        validation = new PackedSequences(inputs.ValidationTokens, stage.SequenceLength);
        if (validation.Count == 0)
            throw new IO.InvalidInputException(null, $"stage '{stage.Name}': the validation data holds fewer than {stage.SequenceLength + 1} tokens, not one sequence");
        evalWindows = Enumerable.Range(0, (int)Math.Min(validation.Count, (inputs.EvalTokens + stage.SequenceLength - 1) / stage.SequenceLength)).ToArray();
        teacherFitsContext = stage.SequenceLength <= teacher.Config.MaxPositionEmbeddings;
    }

    string Checkpoints => Path.Combine(inputs.Folder, CheckpointsFolder);

    public StageResult Run(CancellationToken cancellationToken = default)
    {
        Directory.CreateDirectory(inputs.Folder);
        using var lora = stage.Lora is { } loraRecipe ? LoraAdapters.Attach(student, loraRecipe, DataSeed) : null;
        var trainable = TrainableParameters.Apply(student, stage.Trainable, lora);
        foreach (var p in teacher.parameters()) p.requires_grad = false;
        using var optimizer = CreateOptimizer(trainable);

        TrainingState? resumed = null;
        if (inputs.Resume && StageCheckpoints.NewestIntact(Checkpoints, warning => Note(warning, isWarning: true)) is var (path, state))
        {
            StageCheckpoints.Restore(path, trainable, optimizer, state);
            using (var rng = tensor(Convert.FromBase64String(state.RngState), ScalarType.Byte)) set_rng_state(rng);
            resumed = state;
            Note($"stage '{stage.Name}': resuming from {Path.GetFileName(path)} ({state.Tokens:N0} tokens done)");
        }
        else
        {
            // A fresh start (a new run, or a stage redone with --stage) owes nothing to an earlier attempt's checkpoints.
            if (Directory.Exists(Checkpoints)) Directory.Delete(Checkpoints, recursive: true);
            manual_seed(inputs.Seed + inputs.StageIndex);
        }

        var train = new PackedSequences(inputs.TrainTokens, stage.SequenceLength);
        if (train.Count < stage.MicroBatch)
            throw new IO.InvalidInputException(null, $"stage '{stage.Name}': the training data makes {train.Count} sequences of {stage.SequenceLength} tokens, fewer than one micro-batch of {stage.MicroBatch}");
        var data = new ShuffledBatches(train, DataSeed, resumed?.Data ?? default);
        var metrics = new StageMetrics(inputs.Folder, stage.Name, inputs.TensorBoardFolder, keepUpToStep: resumed?.Step ?? -1);

        var step = resumed?.Step ?? 0;
        var tokens = resumed?.Tokens ?? 0;
        var secondsBefore = resumed?.ElapsedSeconds ?? 0;
        var clock = Stopwatch.StartNew();
        var sessionTokens = 0L;
        var totalSteps = stage.TotalSteps;
        var totalTokens = totalSteps * stage.TokensPerStep;
        TrainingState StateNow(double lr) => new()
        {
            Step = step, Tokens = tokens, Data = data.Position, LearningRate = lr, ElapsedSeconds = secondsBefore + clock.Elapsed.TotalSeconds,
            RngState = RngState(), Parameters = trainable.Select(p => p.Name).ToArray(),
        };

        if (step == 0) metrics.Add(Evaluate(0, 0));
        long lastSaved = step;
        var parameters = trainable.Select(p => p.Parameter).ToArray();
        student.train();
        while (step < totalSteps)
        {
            var lr = LearningRateSchedule.At(stage, step);
            if (cancellationToken.IsCancellationRequested)
            {
                if (step > lastSaved) StageCheckpoints.Save(Checkpoints, trainable, optimizer, StateNow(lr), stage.KeepCheckpoints);
                Note($"stage '{stage.Name}': stopped at step {step}; checkpoint saved, continue with --resume");
                cancellationToken.ThrowIfCancellationRequested();
            }
            foreach (var group in optimizer.ParamGroups) group.LearningRate = lr;

            double loss, gradNorm;
            double[]? layerLosses;
            using (NewDisposeScope())
            {
                optimizer.zero_grad();
                (loss, layerLosses) = AccumulateGradients(data);
                gradNorm = nn.utils.clip_grad_norm_(parameters, stage.GradClip ?? double.PositiveInfinity);
                optimizer.step();
            }
            step++;
            tokens += stage.TokensPerStep;
            sessionTokens += stage.TokensPerStep;

            var seconds = clock.Elapsed.TotalSeconds;
            var speed = seconds > 0 ? sessionTokens / seconds : 0;
            if (step % stage.LogEvery == 0 || step == 1 || step == totalSteps)
                metrics.Add(new TrainMetrics(step, tokens, loss, lr, gradNorm, speed, secondsBefore + seconds, layerLosses));
            progress?.Report(new DistillationProgress
            {
                Stage = stage.Name, StageIndex = inputs.StageIndex, StageCount = inputs.StageCount, Step = step, TotalSteps = totalSteps,
                Tokens = tokens, TotalTokens = totalTokens, TokensPerSecond = speed, Loss = loss, LearningRate = lr,
                Eta = speed > 0 ? TimeSpan.FromSeconds((totalTokens - tokens) / speed) : null,
            });
            if (step % stage.EvalEvery == 0 || step == totalSteps) metrics.Add(Evaluate(step, tokens));
            if (step % stage.CheckpointEvery == 0 && step < totalSteps)
            {
                StageCheckpoints.Save(Checkpoints, trainable, optimizer, StateNow(LearningRateSchedule.At(stage, step)), stage.KeepCheckpoints);
                lastSaved = step;
            }
        }

        student.eval();
        lora?.Merge();
        var title = $"{inputs.StageIndex + 1:D2}-{stage.Name}: {RecipeLoader.NameOf(stage.Objective)}";
        LossPlot.Write(Path.Combine(inputs.Folder, PlotFile), title, metrics.Train, metrics.Evals);
        var result = Path.Combine(inputs.Folder, ResultFolder);
        StudentFolder.Save(student, result, inputs.TokenizerFolder, force: true);
        return new StageResult(stage.Name, stage.Objective, result, step, tokens, secondsBefore + clock.Elapsed.TotalSeconds,
            metrics.Evals.FirstOrDefault(e => e.Step == 0), metrics.Evals.LastOrDefault());
    }

    long DataSeed => inputs.Seed * 1_000_003 + inputs.StageIndex;

    /// <summary>Runs the stage's micro-batches, each back-propagated at 1/accumulation; returns the mean loss (and per-layer alignment losses).</summary>
    (double Loss, double[]? LayerLosses) AccumulateGradients(ShuffledBatches data)
    {
        var scale = 1.0 / stage.Accumulation;
        double total = 0;
        double[]? layers = null;
        for (var micro = 0; micro < stage.Accumulation; micro++)
        {
            using var scope = NewDisposeScope();
            var batch = data.Next(stage.MicroBatch).to(student.Device);
            var input = batch.narrow(1, 0, stage.SequenceLength);
            var targets = batch.narrow(1, 1, stage.SequenceLength);
            if (stage.Objective == Objective.AttentionAlignment)
            {
                var (loss, perLayer) = AttentionAlignment.Compute(teacher, student, input, alignedLayers);
                (loss * scale).backward();
                total += loss.item<float>();
                layers ??= new double[perLayer.Length];
                for (var i = 0; i < perLayer.Length; i++) layers[i] += perLayer[i] * scale;
            }
            else
            {
                Tensor? teacherHidden = null;
                if (stage.KlWeight > 0)
                    using (no_grad()) teacherHidden = teacher.model.forward(input);
                var studentHidden = student.model.forward(input);
                total += LogitLoss.Backward(studentHidden, studentHead, teacherHidden, teacherHead, targets, LogitLossOptions.From(stage), scale).Loss;
            }
        }
        return (total * scale, layers);
    }

    /// <summary>Scores the first eval windows of the validation data (the same ones every time) with student and teacher.</summary>
    EvalMetrics Evaluate(long step, long tokens)
    {
        Note($"stage '{stage.Name}': evaluating on {evalWindows.Length * (long)stage.SequenceLength:N0} held-out tokens");
        var wasTraining = student.training;
        student.eval();
        try
        {
            return EvaluateWindows(step, tokens);
        }
        finally
        {
            if (wasTraining) student.train();
        }
    }

    EvalMetrics EvaluateWindows(long step, long tokens)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var (studentCe, kl, teacherCe, alignment) = (0.0, 0.0, 0.0, 0.0);
        var (scored, batches) = (0L, 0);
        foreach (var chunk in evalWindows.Chunk(stage.MicroBatch))
        {
            using var batchScope = NewDisposeScope();
            var batch = validation.Batch(chunk).to(student.Device);
            var input = batch.narrow(1, 0, stage.SequenceLength);
            var targets = batch.narrow(1, 1, stage.SequenceLength);
            var teacherHidden = teacherFitsContext ? teacher.model.forward(input) : null;
            var studentHidden = student.model.forward(input);
            var value = LogitLoss.Evaluate(studentHidden, studentHead, teacherHidden, teacherFitsContext ? teacherHead : null, targets,
                new LogitLossOptions(1.0, teacherFitsContext ? 1.0 : 0.0, 1.0, stage.LossChunk));
            var n = value.Tokens;
            studentCe += value.CrossEntropy * n;
            kl += value.Kl * n;
            if (teacherFitsContext && teacherEvalCrossEntropy is null)
                teacherCe += LogitLoss.Evaluate(teacherHidden!, teacherHead, null, null, targets, new LogitLossOptions(1.0, 0, 1.0, stage.LossChunk)).CrossEntropy * n;
            if (stage.Objective == Objective.AttentionAlignment)
                alignment += AttentionAlignment.Compute(teacher, student, input, alignedLayers).Loss.item<float>();
            scored += n;
            batches++;
        }
        if (teacherFitsContext) teacherEvalCrossEntropy ??= teacherCe / scored;
        return new EvalMetrics(step, tokens, studentCe / scored, teacherFitsContext ? teacherEvalCrossEntropy : null, teacherFitsContext ? kl / scored : null,
            stage.Objective == Objective.AttentionAlignment ? alignment / batches : null);
    }

    AdamW CreateOptimizer(IReadOnlyList<(string Name, Parameter Parameter)> trainable)
    {
        var o = stage.Optimizer;
        var decayed = trainable.Where(p => TrainableParameters.Decays(p.Name, p.Parameter)).Select(p => p.Parameter).ToList();
        var plain = trainable.Where(p => !TrainableParameters.Decays(p.Name, p.Parameter)).Select(p => p.Parameter).ToList();
        var groups = new List<AdamW.ParamGroup>();
        if (decayed.Count > 0) groups.Add(new AdamW.ParamGroup(decayed, new AdamW.Options { LearningRate = o.LearningRate, beta1 = o.Beta1, beta2 = o.Beta2, eps = o.Epsilon, weight_decay = o.WeightDecay }));
        if (plain.Count > 0) groups.Add(new AdamW.ParamGroup(plain, new AdamW.Options { LearningRate = o.LearningRate, beta1 = o.Beta1, beta2 = o.Beta2, eps = o.Epsilon, weight_decay = 0 }));
        return optim.AdamW(groups, o.LearningRate, o.Beta1, o.Beta2, o.Epsilon, weight_decay: 0);
    }

    static string RngState()
    {
        using var state = get_rng_state();
        return Convert.ToBase64String(state.data<byte>().ToArray());
    }

    void Note(string text, bool isWarning = false) =>
        progress?.Report(new DistillationProgress { Stage = stage.Name, StageIndex = inputs.StageIndex, StageCount = inputs.StageCount, Note = text, IsWarning = isWarning });
}
