using System.Diagnostics;
using CombaDistill.Modeling.Comba;
using CombaDistill.Modeling.Llama;
using CombaDistill.Runtime;
using CombaDistill.Runtime.Parallel;
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

    /// <summary>
    /// An alignment stage run as independent jobs: the block of layers this job trains (null: all in one job). A shard's
    /// <see cref="Folder"/> is its own (<see cref="AlignmentShards.Folder"/>) and its result is <c>result/</c>, not a student.
    /// </summary>
    public LayerShard? Shard { get; init; }

    /// <summary>SHA-256 of the run's recipe text, recorded in a shard's result so that a merge refuses another recipe's shards.</summary>
    public string RecipeSha256 { get; init; } = "";

    /// <summary>Where each step's phases are timed (<c>bench distill</c>); null: not timed.</summary>
    public StepPhases? Phases { get; init; }

    /// <summary>The data-parallel job this process is a rank of (see <see cref="DataParallel"/>); only rank 0 writes files.</summary>
    public ProcessGroup Group { get; init; } = ProcessGroup.Single;

    /// <summary>
    /// The student's arithmetic, resolved (never <see cref="Precision.Auto"/>): bf16 trains bf16 working copies
    /// against float32 masters (<see cref="MixedPrecision"/>). The student comes in, and leaves, in float32.
    /// </summary>
    public Precision Precision { get; init; } = Precision.Float32;
}

/// <summary>How a stage went: evaluations before the first and after the last step, and its cost.</summary>
public sealed record StageResult(string Name, Objective Objective, string StudentFolder, long Steps, long Tokens, double Seconds, EvalMetrics? First, EvalMetrics? Last);

/// <summary>
/// Runs one stage: AdamW on the selected parameters, the learning-rate schedule, micro-batches with gradient
/// accumulation and clipping, metrics, evaluations, checkpoints, and at the end the result folder. One dispose scope
/// per optimizer step; cancellation is honoured between steps by saving a checkpoint and throwing
/// <see cref="OperationCanceledException"/>. In a data-parallel job every rank runs this same loop on its share of
/// each step's batch, gradients are averaged before clipping (so every rank clips and steps identically),
/// evaluations are split over the ranks, and the ranks agree at each step whether to stop; rank 0 alone writes.
/// <para>
/// Alignment stages clip each layer's gradient on its own rather than the global norm: the layers' losses are
/// independent, and nothing else couples them (AdamW and weight decay are per parameter), so a shard of layers trained
/// alone takes the same steps, bit for bit, as those layers in a joint run, and <see cref="MergeShards"/> rebuilds the
/// joint result.
/// </para>
/// </summary>
public sealed class StageTrainer
{
    public const string ResultFolder = "student", CheckpointsFolder = "checkpoints", PlotFile = "loss.png";

    readonly StageInputs inputs;
    readonly StageRecipe stage;
    readonly ProcessGroup group;
    readonly bool writes;
    readonly IProgress<DistillationProgress>? progress;
    readonly LlamaForCausalLM teacher;
    readonly CombaForCausalLM student;
    readonly Tensor teacherHead;

    // looked up at each use: under bf16 training the student's parameters are replaced by working copies
    Tensor StudentHead => LogitLoss.HeadWeight(student.lm_head, student.model.embed_tokens.weight!);
    readonly IReadOnlyList<int> alignedLayers, trainedLayers;
    /// <summary>Aligned layers whose student input norm is the teacher's (AttentionAlignment.SharedInputNorms), set once the stage's student is ready.</summary>
    IReadOnlySet<int> sharedNorms = new HashSet<int>();
    readonly PackedSequences validation;
    readonly int[] evalWindows;
    readonly bool teacherFitsContext;
    double? teacherEvalCrossEntropy;

    public StageTrainer(StageInputs inputs, IProgress<DistillationProgress>? progress = null)
    {
        this.inputs = inputs;
        stage = inputs.Stage;
        group = inputs.Group;
        writes = group.Rank == 0;
        this.progress = progress;
        teacher = inputs.Teacher;
        student = inputs.Student;
        teacherHead = LogitLoss.HeadWeight(teacher.lm_head, teacher.model.embed_tokens.weight!);
        alignedLayers = AttentionAlignment.ConvertedLayers(student);
        trainedLayers = alignedLayers;
        if (inputs.Shard is { } shard)
        {
            if (stage.Objective != Objective.AttentionAlignment)
                throw new InvalidInputException(null, $"stage '{stage.Name}' is {RecipeLoader.NameOf(stage.Objective)}: only attention_alignment stages train their layers independently and run as shards");
            trainedLayers = shard.Layers(alignedLayers);
        }
        validation = new PackedSequences(inputs.ValidationTokens, stage.SequenceLength);
        if (validation.Count == 0)
            throw new InvalidInputException(null, $"stage '{stage.Name}': the validation data holds fewer than {stage.SequenceLength + 1} tokens, not one sequence");
        evalWindows = Enumerable.Range(0, (int)Math.Min(validation.Count, (inputs.EvalTokens + stage.SequenceLength - 1) / stage.SequenceLength)).ToArray();
        teacherFitsContext = stage.SequenceLength <= teacher.Config.MaxPositionEmbeddings;
    }

    string Checkpoints => Path.Combine(inputs.Folder, CheckpointsFolder);

    public StageResult Run(CancellationToken cancellationToken = default)
    {
        if (writes) Directory.CreateDirectory(inputs.Folder);
        using var lora = stage.Lora is { } loraRecipe ? LoraAdapters.Attach(student, loraRecipe, DataSeed) : null;
        var selected = SelectTrainable(lora);
        foreach (var p in teacher.parameters()) p.requires_grad = false;
        // bf16: the optimizer, clipping, averaging and checkpoints see float32 masters; the student computes in bf16
        using var mixed = inputs.Precision == Precision.BFloat16 ? MixedPrecision.Begin(student, selected) : null;
        var trainable = mixed?.Masters ?? selected;
        using var optimizer = CreateOptimizer(trainable);
        if (mixed is not null) optimizer.SetWorkingCopies(mixed.WorkingCopies);
        if (stage.Objective == Objective.AttentionAlignment) sharedNorms = AttentionAlignment.SharedInputNorms(teacher, student, trainedLayers);
        var loop = new Loop(this, trainable, optimizer, mixed, Resume(trainable, optimizer));

        if (loop.Step == 0) loop.Metrics.Add(Evaluate(0, 0));
        student.train();
        student.model.ActivationCheckpointing = stage.ActivationCheckpointing;
        while (loop.Step < stage.TotalSteps)
        {
            loop.StopIfCancelled(cancellationToken);
            loop.TakeStep();
            if (loop.Step % stage.EvalEvery == 0 || loop.Step == stage.TotalSteps) loop.Metrics.Add(Evaluate(loop.Step, loop.Tokens));
            if (loop.Step % stage.CheckpointEvery == 0 && loop.Step < stage.TotalSteps) loop.SaveCheckpoint();
        }
        student.eval();
        student.model.ActivationCheckpointing = false;
        mixed?.End();    // float32 again, with the masters' values
        lora?.Merge();   // the result is a plain student: adapters folded into their projections
        return Finish(loop, trainable);
    }

    /// <summary>Restores the newest intact checkpoint when resuming; otherwise starts fresh (old checkpoints go, the seed is set).</summary>
    TrainingState? Resume(IReadOnlyList<(string Name, Parameter Parameter)> trainable, OptimizerHelper optimizer)
    {
        if (inputs.Resume && StageCheckpoints.RestoreNewest(Checkpoints, trainable, optimizer, warning => Note(warning, isWarning: true)) is var (path, state))
        {
            Note($"stage '{stage.Name}': resuming from {Path.GetFileName(path)} ({state.Tokens:N0} tokens done)");
            return state;
        }
        // A fresh start (a new run, or a stage redone with --stage) owes nothing to an earlier attempt's checkpoints.
        if (writes && Directory.Exists(Checkpoints)) Directory.Delete(Checkpoints, recursive: true);
        manual_seed(inputs.Seed + inputs.StageIndex);
        return null;
    }

    /// <summary>The loss plot and the stage's result: a student folder, or a shard job's result.</summary>
    StageResult Finish(Loop loop, IReadOnlyList<(string Name, Parameter Parameter)> trainable)
    {
        if (writes) LossPlot.Write(Path.Combine(inputs.Folder, PlotFile), PlotTitle, loop.Metrics.Train, loop.Metrics.Evals);
        var elapsed = loop.ElapsedSeconds;
        string result;
        if (inputs.Shard is { } shard)
        {
            // shard jobs run as single processes (DistillationRun refuses them data-parallel)
            result = AlignmentShards.WriteResult(inputs.Folder, new ShardManifest
            {
                Stage = stage.Name, Shard = shard.Index, ShardCount = shard.Count, Layers = trainedLayers, AlignedLayers = alignedLayers,
                Steps = loop.Step, Tokens = loop.Tokens, ElapsedSeconds = elapsed, RecipeSha256 = inputs.RecipeSha256, Parameters = trainable.Select(p => p.Name).ToArray(),
            }, trainable);
        }
        else
        {
            result = Path.Combine(inputs.Folder, ResultFolder);
            if (writes) StudentFolder.Save(student, result, inputs.TokenizerFolder, force: true);
        }
        group.Barrier();    // the next stage, on every rank, starts from this result
        return new StageResult(stage.Name, stage.Objective, result, loop.Step, loop.Tokens, elapsed,
            loop.Metrics.Evals.FirstOrDefault(e => e.Step == 0), loop.Metrics.Evals.LastOrDefault());
    }

    /// <summary>
    /// One stage's training loop state: where it stands (step, tokens, data position, time), and the step itself
    /// (gradients accumulated, averaged over ranks, clipped, the update unless not finite), its metrics and
    /// progress, checkpoints, and the stop on cancellation.
    /// </summary>
    sealed class Loop
    {
        readonly StageTrainer trainer;
        readonly StageRecipe stage;
        readonly IReadOnlyList<(string Name, Parameter Parameter)> trainable;
        readonly FusedAdamW optimizer;
        readonly MixedPrecision? mixed;
        readonly GradientAverager gradients;
        readonly ShuffledBatches data;
        readonly Parameter[][] clipGroups;
        readonly NonFiniteSteps nonFinite;
        readonly Stopwatch clock = Stopwatch.StartNew();
        readonly double secondsBefore;
        long sessionTokens, lastSaved;

        public StageMetrics Metrics { get; }
        public long Step { get; private set; }
        public long Tokens { get; private set; }
        public double ElapsedSeconds => secondsBefore + clock.Elapsed.TotalSeconds;

        public Loop(StageTrainer trainer, IReadOnlyList<(string Name, Parameter Parameter)> trainable, FusedAdamW optimizer, MixedPrecision? mixed, TrainingState? resumed)
        {
            (this.trainer, stage, this.trainable, this.optimizer, this.mixed) = (trainer, trainer.stage, trainable, optimizer, mixed);
            gradients = new GradientAverager(trainer.group, trainable.Select(p => p.Parameter).ToArray());
            gradients.BroadcastParameters();
            mixed?.Publish();
            var train = new PackedSequences(trainer.inputs.TrainTokens, stage.SequenceLength);
            if (train.Count < stage.MicroBatch)
                throw new InvalidInputException(null, $"stage '{stage.Name}': the training data makes {train.Count} sequences of {stage.SequenceLength} tokens, fewer than one micro-batch of {stage.MicroBatch}");
            data = new ShuffledBatches(train, trainer.DataSeed, resumed?.Data ?? default);
            Metrics = new StageMetrics(trainer.inputs.Folder, stage.Name, trainer.inputs.TensorBoardFolder, keepUpToStep: resumed?.Step ?? -1, readOnly: !trainer.writes);
            (Step, Tokens, secondsBefore) = (resumed?.Step ?? 0, resumed?.Tokens ?? 0, resumed?.ElapsedSeconds ?? 0);
            lastSaved = Step;
            clipGroups = trainer.ClipGroups(trainable);
            nonFinite = new NonFiniteSteps(stage.Name, stage.MaxNonFiniteSteps);
        }

        /// <summary>Ranks are interrupted at slightly different moments; they stop together, after the same step, with a checkpoint.</summary>
        public void StopIfCancelled(CancellationToken cancellationToken)
        {
            if (!trainer.group.Any(cancellationToken.IsCancellationRequested)) return;
            if (Step > lastSaved) SaveCheckpoint();
            trainer.group.Barrier();    // the others end only once rank 0 has saved
            trainer.Note($"stage '{stage.Name}': stopped at step {Step}; checkpoint saved, continue with --resume");
            throw new OperationCanceledException(cancellationToken);
        }

        public void SaveCheckpoint()
        {
            if (!trainer.writes) return;
            var state = new TrainingState
            {
                Step = Step, Tokens = Tokens, Data = data.Position, LearningRate = LearningRateSchedule.At(stage, Step), ElapsedSeconds = ElapsedSeconds,
                RngState = RngState(), Parameters = trainable.Select(p => p.Name).ToArray(),
            };
            StageCheckpoints.Save(trainer.Checkpoints, trainable, optimizer, state, stage.KeepCheckpoints);
            lastSaved = Step;
        }

        public void TakeStep()
        {
            var lr = LearningRateSchedule.At(stage, Step);
            foreach (var paramGroup in optimizer.ParamGroups) paramGroup.LearningRate = lr;
            double loss, gradNorm;
            double[]? layerLosses;
            // with COMBADISTILL_GC_PAUSE=1, no collection inside a step (CollectionPause: a TorchSharp race it keeps out)
            var phases = trainer.inputs.Phases;
            phases?.Begin();
            using (CollectionPause.Begin())
            using (NewDisposeScope())
            {
                optimizer.zero_grad();
                (loss, layerLosses) = trainer.AccumulateGradients(data, mixed);
                gradients.Average();
                gradNorm = ClipGradients(clipGroups, stage.GradClip ?? double.PositiveInfinity, optimizer);
                phases?.Mark("loss read, gradient average and clip");
                if (nonFinite.Observe(Step + 1, loss, gradNorm))
                {
                    optimizer.step();
                    phases?.Mark("AdamW");
                    if (mixed is not null && !optimizer.PublishedLastStep)
                    {
                        mixed.Publish();
                        phases?.Mark("bf16 copies of the masters");
                    }
                }
            }
            phases?.End();
            Step++;
            if (nonFinite.InARow > 0)
                trainer.Note($"stage '{stage.Name}' step {Step}: the loss ({loss}) or the gradient norm ({gradNorm}) is not finite; the update was skipped " +
                    $"({nonFinite.InARow} in a row, {stage.MaxNonFiniteSteps} tolerated)", isWarning: true);
            Tokens += stage.TokensPerStep;
            sessionTokens += stage.TokensPerStep;

            var seconds = clock.Elapsed.TotalSeconds;
            var speed = seconds > 0 ? sessionTokens / seconds : 0;
            var totalTokens = stage.TotalSteps * stage.TokensPerStep;
            if (Step % stage.LogEvery == 0 || Step == 1 || Step == stage.TotalSteps)
                Metrics.Add(new TrainMetrics(Step, Tokens, loss, lr, gradNorm, speed, secondsBefore + seconds, layerLosses));
            trainer.progress?.Report(new DistillationProgress
            {
                Stage = stage.Name, StageIndex = trainer.inputs.StageIndex, StageCount = trainer.inputs.StageCount, Step = Step, TotalSteps = stage.TotalSteps,
                Tokens = Tokens, TotalTokens = totalTokens, TokensPerSecond = speed, Loss = loss, LearningRate = lr,
                Eta = speed > 0 ? TimeSpan.FromSeconds((totalTokens - Tokens) / speed) : null,
            });
        }
    }

    /// <summary>
    /// Builds the stage's result from its finished shards (under <see cref="StageInputs.Folder"/>/shards) instead of
    /// training: the input student with each shard's layers put in, the shards' logged steps combined into
    /// metrics.jsonl, and evaluations before and after as the joint run makes them. The student given in the inputs
    /// must be the stage's input; it is changed in place.
    /// </summary>
    public StageResult MergeShards()
    {
        if (stage.Objective != Objective.AttentionAlignment)
            throw new InvalidInputException(null, $"stage '{stage.Name}' is {RecipeLoader.NameOf(stage.Objective)}: only attention_alignment stages run as shards");
        var shards = AlignmentShards.ReadFinished(inputs.Folder, stage, alignedLayers, inputs.RecipeSha256);
        Note($"stage '{stage.Name}': merging {shards.Count} shards");
        File.Delete(Path.Combine(inputs.Folder, StageMetrics.FileName));
        var metrics = new StageMetrics(inputs.Folder, stage.Name, inputs.TensorBoardFolder, keepUpToStep: -1);
        student.eval();
        metrics.Add(Evaluate(0, 0));
        foreach (var m in AlignmentShards.MergeTrainMetrics(shards)) metrics.Add(m);
        AlignmentShards.LoadWeights(shards, student);
        var (steps, tokens) = (stage.TotalSteps, stage.TotalSteps * stage.TokensPerStep);
        metrics.Add(Evaluate(steps, tokens));
        LossPlot.Write(Path.Combine(inputs.Folder, PlotFile), PlotTitle, metrics.Train, metrics.Evals);
        var result = Path.Combine(inputs.Folder, ResultFolder);
        StudentFolder.Save(student, result, inputs.TokenizerFolder, force: true);
        return new StageResult(stage.Name, stage.Objective, result, steps, tokens, shards.Max(s => s.Manifest.ElapsedSeconds), metrics.Evals[0], metrics.Evals[^1]);
    }

    string PlotTitle => $"{inputs.StageIndex + 1:D2}-{stage.Name}: {RecipeLoader.NameOf(stage.Objective)}" + (inputs.Shard is { } s ? $", shard {s}" : "");

    /// <summary>The recipe's selection; a shard keeps the part inside its layers (a joint run's others get no alignment gradient).</summary>
    IReadOnlyList<(string Name, Parameter Parameter)> SelectTrainable(LoraAdapters? lora)
    {
        var selected = TrainableParameters.Apply(student, stage.Trainable, lora);
        if (inputs.Shard is not { } shard) return selected;
        var kept = new List<(string, Parameter)>();
        foreach (var (name, parameter) in selected)
        {
            var inShard = AlignmentShards.LayerOf(name) is { } layer && trainedLayers.Contains(layer);
            parameter.requires_grad = inShard;
            if (inShard) kept.Add((name, parameter));
        }
        if (kept.Count == 0)
            throw new InvalidInputException(null, $"stage '{stage.Name}', shard {shard}: trainable '{stage.Trainable}' selects no parameter in layers [{string.Join(", ", trainedLayers)}]");
        return kept;
    }

    /// <summary>Alignment stages clip per decoder layer (see the class comment); other stages clip the global norm.</summary>
    Parameter[][] ClipGroups(IReadOnlyList<(string Name, Parameter Parameter)> trainable) =>
        stage.Objective == Objective.AttentionAlignment
            ? trainable.GroupBy(p => AlignmentShards.LayerOf(p.Name) ?? -1).Select(g => g.Select(p => p.Parameter).ToArray()).ToArray()
            : [trainable.Select(p => p.Parameter).ToArray()];

    /// <summary>
    /// Clips each group's gradient norm to <paramref name="maxNorm"/>; returns the norm of all gradients before
    /// clipping. The norm is clip_grad_norm_'s (each gradient's 2-norm, then the norm of those), and so is the factor,
    /// maxNorm / (norm + 1e-6) where that is below 1. The factor goes to the optimizer's next step: its kernel applies
    /// it as it reads each gradient, which saves the clip's own pass over every gradient (about 10 GB of traffic a step
    /// at the 1B shape); where the kernel does not step, the gradients are scaled in place first.
    /// </summary>
    static double ClipGradients(Parameter[][] groups, double maxNorm, FusedAdamW optimizer)
    {
        var norms = GradientNorms(groups);
        for (var i = 0; i < groups.Length; i++)
        {
            var factor = maxNorm / (norms[i] + 1e-6);
            if (factor < 1) optimizer.ScaleGradients(groups[i], factor);
        }
        return norms.Length == 1 ? norms[0] : Math.Sqrt(norms.Sum(n => n * n));
    }

    /// <summary>
    /// The 2-norm of each group's gradients together, as clip_grad_norm_ computes it (each gradient's norm, then the
    /// norm of those), read back in one transfer: an alignment stage has a group per layer, and clip_grad_norm_
    /// waits for the device once a group.
    /// </summary>
    static double[] GradientNorms(Parameter[][] groups)
    {
        if (FusedGradientNorms.TryCompute(groups) is { } fused) return fused;   // one launch (COMBADISTILL_FUSED_GRAD_NORM=0: a norm per gradient)
        using var scope = NewDisposeScope();
        var totals = new List<Tensor>();
        var withGradients = new List<int>();
        for (var i = 0; i < groups.Length; i++)
        {
            var norms = groups[i].Where(p => p.grad is not null).Select(p => p.grad!.norm()).ToArray();
            if (norms.Length == 0) continue;
            totals.Add(norms.Length == 1 ? norms[0] : stack(norms).norm());
            withGradients.Add(i);
        }
        var result = new double[groups.Length];
        if (totals.Count == 0) return result;
        var values = stack(totals).to(ScalarType.Float64).cpu().data<double>().ToArray();
        for (var j = 0; j < withGradients.Count; j++) result[withGradients[j]] = values[j];
        return result;
    }

    long DataSeed => inputs.Seed * 1_000_003 + inputs.StageIndex;

    /// <summary>
    /// Draws the step's global batch, runs this rank's share of it in micro-batches, each back-propagated at its share
    /// of the rank's sequences; returns the loss (and per-layer alignment losses) averaged over all ranks.
    /// </summary>
    (double Loss, double[]? LayerLosses) AccumulateGradients(ShuffledBatches data, MixedPrecision? mixed)
    {
        var global = data.NextIndices(stage.MicroBatch * stage.Accumulation);
        var share = global[DataParallel.Share(global.Length, group.Rank, group.WorldSize)];
        // the sums stay on the device until every micro-batch is queued: a read waits for the device
        using var sums = new DeviceSums(student.Device);
        var start = 0;
        foreach (var size in DataParallel.MicroBatches(share.Length, stage.MicroBatch))
        {
            using var scope = NewDisposeScope();
            var scale = (double)size / share.Length;
            var batch = data.Sequences.Batch(share[start..(start + size)]).to(student.Device);
            start += size;
            var input = batch.narrow(1, 0, stage.SequenceLength);
            var targets = batch.narrow(1, 1, stage.SequenceLength);
            var phases = inputs.Phases;
            if (stage.Objective == Objective.AttentionAlignment)
            {
                // each layer's mixer backpropagates as soon as its loss is formed: one layer's activations alive at a time
                var alignment = AttentionAlignment.Compute(teacher, student, input, trainedLayers, alignedLayers.Count, stage.ActivationCheckpointing, sharedNorms,
                    backwardScale: scale);
                phases?.Mark("teacher layers, student mixers forward and backward");
                if (mixed is not null)
                {
                    mixed.AccumulateGradients();
                    phases?.Mark("float32 gradients");
                }
                sums.Add(alignment.Loss, alignment.PerLayerLosses, scale);
            }
            else
            {
                Tensor? teacherHidden = null;
                if (stage.KlWeight > 0)
                    using (no_grad()) teacherHidden = teacher.model.forward(input);
                phases?.Mark("teacher forward");
                var studentHidden = student.model.forward(input);
                phases?.Mark("student forward");
                sums.Add(LogitLoss.Backward(studentHidden, StudentHead, teacherHidden, teacherHead, targets, LogitLossOptions.From(stage), scale,
                    // bf16: the head's gradient joins the float32 masters as soon as it is formed
                    afterHeadGradient: mixed is null ? null : mixed.AccumulateGradients,
                    beforeBodyBackward: phases is null ? null : () => phases.Mark("heads and logit loss")).Loss * scale);
                phases?.Mark("student backward");
                if (mixed is not null)
                {
                    mixed.AccumulateGradients();
                    phases?.Mark("float32 gradients");
                }
            }
        }
        var (total, layers) = sums.Read();
        if (group.IsSingle) return (total, layers);
        var averaged = group.AllReduce([total, .. layers ?? []], ReduceOp.Average);
        return (averaged[0], layers is null ? null : averaged[1..]);
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
        var (scored, batches) = (0L, 0L);
        var chunks = evalWindows.Chunk(stage.MicroBatch).ToArray();
        var computeTeacherCe = teacherFitsContext && teacherEvalCrossEntropy is null;
        // Rank r scores chunks r, r + W, …; the sums are added over the ranks.
        for (var c = group.Rank; c < chunks.Length; c += group.WorldSize)
        {
            var chunk = chunks[c];
            using var pause = CollectionPause.Begin();
            using var batchScope = NewDisposeScope();
            var batch = validation.Batch(chunk).to(student.Device);
            var input = batch.narrow(1, 0, stage.SequenceLength);
            var targets = batch.narrow(1, 1, stage.SequenceLength);
            var teacherHidden = teacherFitsContext ? teacher.model.forward(input) : null;
            var studentHidden = student.model.forward(input);
            var value = LogitLoss.Evaluate(studentHidden, StudentHead, teacherHidden, teacherFitsContext ? teacherHead : null, targets,
                new LogitLossOptions(1.0, teacherFitsContext ? 1.0 : 0.0, 1.0, stage.LossChunk));
            var n = value.Tokens;
            studentCe += value.CrossEntropy * n;
            kl += value.Kl * n;
            if (computeTeacherCe)
                teacherCe += LogitLoss.Evaluate(teacherHidden!, teacherHead, null, null, targets, new LogitLossOptions(1.0, 0, 1.0, stage.LossChunk)).CrossEntropy * n;
            if (stage.Objective == Objective.AttentionAlignment)
                alignment += AttentionAlignment.Compute(teacher, student, input, trainedLayers, alignedLayers.Count, sharedNorms: sharedNorms).Loss.item<float>();
            scored += n;
            batches++;
        }
        if (!group.IsSingle)
        {
            var sums = group.AllReduce([studentCe, kl, teacherCe, alignment, scored, batches], ReduceOp.Sum);
            (studentCe, kl, teacherCe, alignment, scored, batches) = (sums[0], sums[1], sums[2], sums[3], (long)sums[4], (long)sums[5]);
        }
        if (computeTeacherCe) teacherEvalCrossEntropy = teacherCe / scored;
        return new EvalMetrics(step, tokens, studentCe / scored, teacherFitsContext ? teacherEvalCrossEntropy : null, teacherFitsContext ? kl / scored : null,
            stage.Objective == Objective.AttentionAlignment ? alignment / batches : null);
    }

    FusedAdamW CreateOptimizer(IReadOnlyList<(string Name, Parameter Parameter)> trainable)
    {
        var o = stage.Optimizer;
        var decayed = trainable.Where(p => TrainableParameters.Decays(p.Name, p.Parameter)).Select(p => p.Parameter).ToList();
        var plain = trainable.Where(p => !TrainableParameters.Decays(p.Name, p.Parameter)).Select(p => p.Parameter).ToList();
        var groups = new List<AdamW.ParamGroup>();
        if (decayed.Count > 0) groups.Add(new AdamW.ParamGroup(decayed, new AdamW.Options { LearningRate = o.LearningRate, beta1 = o.Beta1, beta2 = o.Beta2, eps = o.Epsilon, weight_decay = o.WeightDecay }));
        if (plain.Count > 0) groups.Add(new AdamW.ParamGroup(plain, new AdamW.Options { LearningRate = o.LearningRate, beta1 = o.Beta1, beta2 = o.Beta2, eps = o.Epsilon, weight_decay = 0 }));
        return new FusedAdamW(groups, o.LearningRate, o.Beta1, o.Beta2, o.Epsilon);
    }

    static string RngState()
    {
        using var state = get_rng_state();
        return Convert.ToBase64String(state.data<byte>().ToArray());
    }

    void Note(string text, bool isWarning = false) =>
        progress?.Report(new DistillationProgress { Stage = stage.Name, StageIndex = inputs.StageIndex, StageCount = inputs.StageCount, Note = text, IsWarning = isWarning });
}

/// <summary>
/// A step's loss (and per-layer alignment losses) summed over its micro-batches on the device, read once at the end:
/// each read waits for the device, so reading per micro-batch would leave the GPU idle while the host queues the next.
/// The arithmetic is that of reading each value and summing in double.
/// </summary>
sealed class DeviceSums(Device device) : IDisposable
{
    readonly Tensor total = zeros([], ScalarType.Float64, device).DetachFromDisposeScope();   // disposed here, not by a caller's scope
    double hostTotal;
    Tensor? layers;

    public void Add(double value) => hostTotal += value;

    public void Add(Tensor loss, Tensor perLayer, double scale)
    {
        using var scope = NewDisposeScope();
        total.add_(loss.detach().to(ScalarType.Float64) * scale);
        var scaled = perLayer.to(ScalarType.Float64) * scale;
        if (layers is null) layers = scaled.DetachFromDisposeScope();
        else layers.add_(scaled);
    }

    public (double Total, double[]? Layers) Read() =>
        (total.item<double>() + hostTotal, layers?.cpu().data<double>().ToArray());

    public void Dispose()
    {
        total.Dispose();
        layers?.Dispose();
    }
}
