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
    /// <summary>
    /// W of the head h ↦ h Wᵀ: the lm_head's weight, or with tied embeddings the embedding matrix. Both model classes
    /// make their lm_head without a bias, so the weight is the whole head.
    /// </summary>
    public static Tensor HeadWeight(TorchSharp.Modules.Linear? lmHead, Tensor embeddingWeight)
    {
        if (lmHead?.bias is not null) throw new ArgumentException("the logit loss takes a head without a bias");
        return lmHead?.weight ?? embeddingWeight;
    }

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
    /// graph behind <paramref name="studentHidden"/> and the head's weight). Gradients accumulate, as for micro-batches.
    /// <para>
    /// Nothing in the loss goes through autograd. Each chunk's logit gradient G is written in closed form: with
    /// p = softmax(z / T), ∂(T² KL(p_T ‖ p_S)) / ∂z_S = T (p_S − p_T), and ∂CE / ∂z_S = softmax(z_S) − onehot(target).
    /// Autograd of the formula would keep and revisit every intermediate of log_softmax, exp, the difference and the
    /// product, each a B × chunk × vocab float32 tensor (263 MB at 512 positions of a 128,256-token vocabulary); the
    /// closed form makes about half as many passes over them. G W is the hidden states' gradient at once, and the
    /// head's gradient Gᵀ h is one product over the whole micro-batch after the last chunk: per chunk, each product
    /// would be added into the head's gradient, under mixed precision into its float32 master (for a 128,256 × 2,048
    /// embedding about 2.6 GB of memory traffic per chunk). G is kept until then, B × T × vocab in the head's dtype
    /// (2.1 GB at 4 × 2,048 tokens in bf16).
    /// </para>
    /// </summary>
    /// <param name="studentHidden">the student's final-normed hidden states (B, T, hidden), with their graph</param>
    /// <param name="studentHead">the student's head weight W (vocab, hidden): logits = h Wᵀ (<see cref="HeadWeight"/>)</param>
    /// <param name="teacherHidden">the teacher's final-normed hidden states (B, T, hidden), no graph; null when KL's weight is 0</param>
    /// <param name="teacherHead">as <paramref name="studentHead"/>, for the teacher</param>
    /// <param name="targets">next-token ids (B, T)</param>
    /// <param name="afterHeadGradient">called once the head's weight has its gradient, before the body's backward
    /// (mixed precision moves it into float32 there, so that a tied embedding's lookup gradient is not added to it in bf16)</param>
    /// <param name="beforeBodyBackward">called once the loss's own work is queued, just before the backward pass through the body (a phase mark)</param>
    public static LogitLossValue Backward(Tensor studentHidden, Tensor studentHead, Tensor? teacherHidden, Tensor? teacherHead,
        Tensor targets, LogitLossOptions options, double lossScale = 1.0, Action? afterHeadGradient = null, Action? beforeBodyBackward = null)
    {
        using var scope = NewDisposeScope();
        var W = studentHead.detach();
        var hidden = studentHidden.detach();
        var (batch, length, vocab) = (hidden.shape[0], hidden.shape[1], W.shape[0]);
        var hiddenGradient = zeros_like(hidden);
        var logitGradient = studentHead.requires_grad ? empty([batch, length, vocab], W.dtype, W.device) : null;
        Sums sums;
        using (no_grad())
        {
            sums = Chunks(hidden, W, teacherHidden, teacherHead, targets, options, lossScale, (gradient, start, span) =>
            {
                var g = gradient.to(W.dtype);
                hiddenGradient.narrow(1, start, span).copy_(g.matmul(W));
                logitGradient?.narrow(1, start, span).copy_(g);
            });
            if (logitGradient is not null)
            {
                var headGradient = logitGradient.view(-1, vocab).t().mm(hidden.reshape(-1, hidden.shape[2]).to(W.dtype));
                if (studentHead.grad is { IsInvalid: false } accumulated) accumulated.add_(headGradient);
                else studentHead.grad = headGradient;   // the gradient slot holds its own reference
                logitGradient.Dispose();
                afterHeadGradient?.Invoke();
            }
        }
        beforeBodyBackward?.Invoke();
        studentHidden.backward([hiddenGradient]);
        // read only now: a read waits for the device, and everything this micro-batch needs is queued
        return sums.Read();
    }

    /// <summary>The same numbers without gradients, for evaluation.</summary>
    public static LogitLossValue Evaluate(Tensor studentHidden, Tensor studentHead, Tensor? teacherHidden, Tensor? teacherHead,
        Tensor targets, LogitLossOptions options)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        return Chunks(studentHidden, studentHead, teacherHidden, teacherHead, targets, options, 0, null).Read();
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

    /// <param name="backward">given each chunk's logit gradient (already multiplied by <paramref name="lossScale"/> /
    /// tokens), the chunk's first position and its length; null: values only. Runs without autograd.</param>
    static Sums Chunks(Tensor studentHidden, Tensor studentHead, Tensor? teacherHidden, Tensor? teacherHead,
        Tensor targets, LogitLossOptions options, double lossScale, Action<Tensor, long, long>? backward)
    {
        var (batch, length) = (studentHidden.shape[0], studentHidden.shape[1]);
        var tokens = batch * length;
        var useKl = options.KlWeight > 0 || (backward is null && teacherHidden is not null);
        var useCe = options.CeWeight > 0 || backward is null;
        if (useKl && (teacherHidden is null || teacherHead is null)) throw new ArgumentException("KL needs the teacher's hidden states and head");
        var t = options.Temperature;
        var perToken = lossScale / tokens;
        var klSum = zeros([], ScalarType.Float64, studentHidden.device);
        var ceSum = zeros([], ScalarType.Float64, studentHidden.device);
        for (long start = 0; start < length; start += options.Chunk)
        {
            using var chunkScope = NewDisposeScope();
            var span = Math.Min(options.Chunk, length - start);
            using var noGrad = no_grad();
            var logits = nn.functional.linear(studentHidden.narrow(1, start, span), studentHead);
            var teacherRaw = useKl ? nn.functional.linear(teacherHidden!.narrow(1, start, span), teacherHead!) : null;
            if (Ops.FusedLogitLoss.Use(logits, teacherRaw))
            {
                // one kernel per chunk for bf16 logits on CUDA (Ops/FusedLogitLoss.cs)
                var (fusedGradient, klRows, ceRows) = Ops.FusedLogitLoss.Rows(logits, teacherRaw, useCe ? targets.narrow(1, start, span) : null,
                    t, options.KlWeight * t * perToken, options.CeWeight * perToken, gradient: backward is not null);
                if (klRows is not null) klSum.add_(klRows.sum(type: ScalarType.Float64));
                if (ceRows is not null) ceSum.add_(ceRows.sum(type: ScalarType.Float64));
                backward?.Invoke(fusedGradient!, start, span);
                continue;
            }
            var studentLogits = logits.to(ScalarType.Float32);
            // log p_S at temperature T (at T = 1 also cross-entropy's)
            var logStudent = nn.functional.log_softmax(t == 1 ? studentLogits : studentLogits / t, -1);
            Tensor? gradient = null;
            if (useKl)
            {
                var teacherLogits = teacherRaw!.to(ScalarType.Float32);
                var logTeacher = nn.functional.log_softmax(t == 1 ? teacherLogits : teacherLogits / t, -1);
                var pTeacher = logTeacher.exp();
                klSum.add_((logTeacher - logStudent).mul_(pTeacher).sum());
                if (backward is not null)
                    gradient = logStudent.exp().sub_(pTeacher).mul_(options.KlWeight * t * perToken);
            }
            if (useCe)
            {
                var logProbabilities = t == 1 ? logStudent : nn.functional.log_softmax(studentLogits, -1);
                var index = targets.narrow(1, start, span).unsqueeze(-1);
                ceSum.add_(logProbabilities.gather(-1, index).sum().neg());
                if (backward is not null)
                {
                    var ceGradient = logProbabilities.exp();
                    ceGradient.scatter_add_(-1, index, full_like(index, -1.0, dtype: ScalarType.Float32)).mul_(options.CeWeight * perToken);
                    gradient = gradient is null ? ceGradient : gradient.add_(ceGradient);
                }
            }
            backward?.Invoke(gradient ?? zeros_like(studentLogits), start, span);   // both weights 0: the recipe refuses that
        }
        return new Sums(klSum, ceSum, useKl, useCe, tokens, options);
    }
}
