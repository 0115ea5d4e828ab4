using CombaDistill.Modeling;
using static TorchSharp.torch;

namespace CombaDistill.Evaluation;

/// <summary>
/// How closely a model follows its teacher on the same positions: the share of positions whose
/// argmax is the teacher's, and the mean KL(teacher ‖ model) in nats per token (the direction
/// distillation minimises).
/// </summary>
public sealed record AgreementResult(long Tokens, double Top1Agreement, double MeanKl);

public sealed record TextMetricsResult(Windowing Windowing, PerplexityResult Model, PerplexityResult? Teacher, AgreementResult? Agreement);

/// <summary>
/// Perplexity, and with a teacher its perplexity and the agreement between the two, in one pass
/// over the token stream: each window is read once by each model, scored as <see cref="Perplexity"/> scores it.
/// </summary>
public static class TextMetrics
{
    public static TextMetricsResult Evaluate(ICausalLM model, ICausalLM? teacher, IReadOnlyList<int> tokens, Windowing windowing,
        IProgress<(int Done, int Total)>? progress = null, CancellationToken cancellationToken = default)
    {
        windowing.Validate();
        var windows = windowing.Over(tokens.Count).ToList();
        if (windows.Count == 0) throw new ArgumentException("at least 2 tokens are needed to score one");
        double modelNll = 0, teacherNll = 0, kl = 0;
        long scored = 0, agreed = 0;
        using var noGrad = no_grad();
        for (var w = 0; w < windows.Count; w++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var window = windows[w];
            using var scope = NewDisposeScope();
            var (ids, targets) = Perplexity.Read(tokens, window);
            var modelLogProbs = Perplexity.ScoredLogProbs(model, ids, window);
            modelNll += Perplexity.Nll(modelLogProbs, targets);
            scored += targets.Length;
            if (teacher is not null)
            {
                var teacherLogProbs = Perplexity.ScoredLogProbs(teacher, ids, window);
                teacherNll += Perplexity.Nll(teacherLogProbs, targets);
                var student = modelLogProbs.to(teacherLogProbs.device);
                agreed += student.argmax(-1).eq(teacherLogProbs.argmax(-1)).sum().item<long>();
                // Σ p_t (log p_t − log p_s); identical rows give exactly 0.
                kl += (teacherLogProbs.exp() * (teacherLogProbs - student)).sum(ScalarType.Float64).item<double>();
            }
            progress?.Report((w + 1, windows.Count));
        }
        return new TextMetricsResult(
            windowing,
            new PerplexityResult(scored, modelNll / scored),
            teacher is null ? null : new PerplexityResult(scored, teacherNll / scored),
            teacher is null ? null : new AgreementResult(scored, (double)agreed / scored, kl / scored));
    }
}
