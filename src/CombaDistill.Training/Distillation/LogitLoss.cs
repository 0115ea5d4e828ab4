using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Distillation;

/// <summary>Weights of the logit objective: loss = kl_weight · T² · KL(p_T^τ ‖ p_S^τ) + ce_weight · CE(p_S, next token).</summary>
public sealed record LogitLossOptions(double Temperature, double KlWeight, double CeWeight, int Chunk)
{
    public static LogitLossOptions From(StageRecipe stage) => new(stage.Temperature, stage.KlWeight, stage.CeWeight, stage.LossChunk);
}

/// <summary>Per-token means over the tokens scored: the combined loss and its two parts (a part not computed is 0).</summary>
public readonly record struct LogitLossValue(double Loss, double Kl, double CrossEntropy, long Tokens);

/// <summary>
/// The stage-2/3 objectives on logits, computed a chunk of sequence positions at a time so that only
/// B × chunk × vocab logits exist at once: the student's final hidden states are cut from the graph, each chunk's
/// logits and loss are built and back-propagated into the cut (and the head), and finally the accumulated gradient
/// flows back through the body in one backward pass. The values and gradients are those of the unchunked loss.
/// <para>
/// KL is written out rather than taken from kl_div: per token Σ_v p_T(v) (log p_T(v) − log p_S(v)) with
/// p = softmax(z / T), averaged over tokens (PyTorch's "batchmean" per token, which TorchSharp's kl_div lacks), and
/// multiplied by T² so its gradients keep their size across temperatures (Hinton et al.).
/// </para>
/// </summary>
public static class LogitLoss
{
    /// <summary>hidden → logits: the lm_head, or with tied embeddings the embedding matrix.</summary>
    public static Func<Tensor, Tensor> Head(TorchSharp.Modules.Linear? lmHead, Tensor embeddingWeight) =>
        lmHead is not null ? lmHead.forward : h => nn.functional.linear(h, embeddingWeight);

    /// <summary>The unchunked KL(teacher ‖ student) per token at temperature T (without the T² factor): the reference.</summary>
    public static Tensor KlDivergence(Tensor teacherLogits, Tensor studentLogits, double temperature)
    {
        using var scope = NewDisposeScope();
        var logTeacher = nn.functional.log_softmax(teacherLogits.to(ScalarType.Float32) / temperature, -1);
        var logStudent = nn.functional.log_softmax(studentLogits.to(ScalarType.Float32) / temperature, -1);
        var perToken = (logTeacher.exp() * (logTeacher - logStudent)).sum(-1);
        return perToken.mean().MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Computes the loss chunk by chunk and back-propagates <paramref name="lossScale"/> × loss into the student (the
    /// graph behind <paramref name="studentHidden"/> and the head's parameters). Gradients accumulate, as for
    /// micro-batches.
    /// </summary>
    /// <param name="studentHidden">the student's final-normed hidden states (B, T, hidden), with their graph</param>
    /// <param name="studentHead">hidden → logits (the lm_head, or the tied embedding)</param>
    /// <param name="teacherHidden">the teacher's final-normed hidden states (B, T, hidden), no graph; null when KL's weight is 0</param>
    /// <param name="teacherHead">as <paramref name="studentHead"/>, for the teacher</param>
    /// <param name="targets">next-token ids (B, T)</param>
    /// <param name="afterChunk">called after each chunk's backward (mixed precision moves the head's gradient into float32 there)</param>
    public static LogitLossValue Backward(Tensor studentHidden, Func<Tensor, Tensor> studentHead, Tensor? teacherHidden, Func<Tensor, Tensor>? teacherHead,
        Tensor targets, LogitLossOptions options, double lossScale = 1.0, Action? afterChunk = null)
    {
        using var scope = NewDisposeScope();
        var cut = studentHidden.detach().requires_grad_(true);
        var sums = Chunks(cut, studentHead, teacherHidden, teacherHead, targets, options, (chunkLoss, tokens) =>
        {
            (chunkLoss * (lossScale / tokens)).backward();
            afterChunk?.Invoke();
        });
        studentHidden.backward([cut.grad!]);
        // read only now: a read waits for the device, and everything this micro-batch needs is queued
        return sums.Read();
    }

    /// <summary>The same numbers without gradients, for evaluation.</summary>
    public static LogitLossValue Evaluate(Tensor studentHidden, Func<Tensor, Tensor> studentHead, Tensor? teacherHidden, Func<Tensor, Tensor>? teacherHead,
        Tensor targets, LogitLossOptions options)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        return Chunks(studentHidden, studentHead, teacherHidden, teacherHead, targets, options, null).Read();
    }

    /// <summary>The chunks' sums, kept on the device (reading a number waits for the device; one read per micro-batch, not two per chunk).</summary>
    readonly record struct Sums(Tensor Kl, Tensor CrossEntropy, bool UseKl, bool UseCe, long Tokens, LogitLossOptions Options)
    {
        public LogitLossValue Read()
        {
            var (klMean, ceMean) = (Kl.item<double>() / Tokens, CrossEntropy.item<double>() / Tokens);
            var t2 = Options.Temperature * Options.Temperature;
            return new LogitLossValue(Options.KlWeight * t2 * klMean + Options.CeWeight * ceMean, UseKl ? klMean : 0, UseCe ? ceMean : 0, Tokens);
        }
    }

    static Sums Chunks(Tensor studentHidden, Func<Tensor, Tensor> studentHead, Tensor? teacherHidden, Func<Tensor, Tensor>? teacherHead,
        Tensor targets, LogitLossOptions options, Action<Tensor, long>? backward)
    {
        var (batch, length) = (studentHidden.shape[0], studentHidden.shape[1]);
        var tokens = batch * length;
        var useKl = options.KlWeight > 0 || (backward is null && teacherHidden is not null);
        var useCe = options.CeWeight > 0 || backward is null;
        if (useKl && (teacherHidden is null || teacherHead is null)) throw new ArgumentException("KL needs the teacher's hidden states and head");
        var klSum = zeros([], ScalarType.Float64, studentHidden.device);
        var ceSum = zeros([], ScalarType.Float64, studentHidden.device);
        for (long start = 0; start < length; start += options.Chunk)
        {
            using var chunkScope = NewDisposeScope();
            var span = Math.Min(options.Chunk, length - start);
            var studentLogits = studentHead(studentHidden.narrow(1, start, span)).to(ScalarType.Float32);
            var chunkLoss = zeros([], ScalarType.Float32, studentHidden.device);
            if (useKl)
            {
                Tensor teacherLogits;
                using (no_grad()) teacherLogits = teacherHead!(teacherHidden!.narrow(1, start, span)).to(ScalarType.Float32);
                var logTeacher = nn.functional.log_softmax(teacherLogits / options.Temperature, -1);
                var logStudent = nn.functional.log_softmax(studentLogits / options.Temperature, -1);
                var kl = (logTeacher.exp() * (logTeacher - logStudent)).sum();
                klSum.add_(kl.detach());
                chunkLoss = chunkLoss + kl * (options.KlWeight * options.Temperature * options.Temperature);
            }
            if (useCe)
            {
                var ce = nn.functional.cross_entropy(studentLogits.reshape(-1, studentLogits.shape[^1]), targets.narrow(1, start, span).reshape(-1),
                    reduction: nn.Reduction.Sum);
                ceSum.add_(ce.detach());
                chunkLoss = chunkLoss + ce * options.CeWeight;
            }
            backward?.Invoke(chunkLoss, tokens);
        }
        return new Sums(klSum, ceSum, useKl, useCe, tokens, options);
    }
}
