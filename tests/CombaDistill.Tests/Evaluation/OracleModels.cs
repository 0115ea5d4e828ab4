using CombaDistill.Modeling;
using CombaDistill.Modeling.Llama;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Evaluation;

/// <summary>
/// A model whose answers are known in advance: at each position it finds the earlier position whose
/// preceding tokens match the current suffix longest (latest on ties) and predicts the token that
/// followed it, with logit 10 (everything else 0; no match: all 0, so argmax is id 0). With a
/// <paramref name="lookback"/> it only looks that many tokens back, like a sliding-window memory.
/// </summary>
sealed class SuffixCopyModel(int vocabSize, int? lookback = null) : ICausalLM
{
    public ICausalLMConfig Config { get; } = new LlamaConfig { VocabSize = vocabSize, MaxPositionEmbeddings = 1 << 16, BosTokenId = 1, EosTokenIds = [2] };
    public Device Device => CPU;

    public Tensor Forward(Tensor inputIds, IDecodingState? state = null)
    {
        if (state is not null) throw new NotSupportedException("the oracle reads whole sequences");
        var (batch, length) = ((int)inputIds.shape[0], (int)inputIds.shape[1]);
        var ids = inputIds.cpu().data<long>().ToArray();
        var logits = new float[batch * length * vocabSize];
        for (var b = 0; b < batch; b++)
        {
            var row = ids.AsSpan(b * length, length);
            for (var t = 0; t < length; t++)
                if (Predict(row, t) is { } next) logits[((long)b * length + t) * vocabSize + next] = 10;
        }
        return tensor(logits, [batch, length, vocabSize]);
    }

    long? Predict(ReadOnlySpan<long> row, int t)
    {
        var (bestLength, bestNext) = (0, (long?)null);
        var first = lookback is { } w ? Math.Max(0, t - w) : 0;
        for (var j = t - 1; j >= first; j--)
        {
            var match = 0;
            while (match <= j && match < 64 && row[j - match] == row[t - match]) match++;
            if (match > bestLength) (bestLength, bestNext) = (match, row[j + 1]);
        }
        return bestNext;
    }

    public IDecodingState NewState(int batch) => throw new NotSupportedException("the oracle reads whole sequences");
}

/// <summary>The same logits at every position whatever the input: log-likelihoods are sums of one fixed log-softmax.</summary>
sealed class FixedLogitsModel(float[] logits) : ICausalLM
{
    public ICausalLMConfig Config { get; } = new LlamaConfig { VocabSize = logits.Length, MaxPositionEmbeddings = 4096, BosTokenId = 1, EosTokenIds = [2] };
    public Device Device => CPU;

    public Tensor Forward(Tensor inputIds, IDecodingState? state = null) =>
        tensor(logits).expand(inputIds.shape[0], inputIds.shape[1], logits.Length).contiguous();

    public IDecodingState NewState(int batch) => throw new NotSupportedException();
}

/// <summary>
/// A tiny Elman RNN, h_t = tanh(W h_{t−1} + E x_t), logits = U h_t: a decoding state of constant
/// size (B × Hidden floats) whatever the length, as a Comba student's is.
/// </summary>
sealed class TinyRecurrentModel : ICausalLM
{
    public const int Hidden = 16;
    readonly Tensor embed, recurrence, output;

    public TinyRecurrentModel(int vocabSize, ulong seed)
    {
        var g = new Generator(seed);
        embed = randn([vocabSize, Hidden], generator: g);
        recurrence = randn([Hidden, Hidden], generator: g) / Math.Sqrt(Hidden);
        output = randn([Hidden, vocabSize], generator: g);
        Config = new LlamaConfig { VocabSize = vocabSize, MaxPositionEmbeddings = 1 << 16, BosTokenId = 1, EosTokenIds = [2] };
    }

    public ICausalLMConfig Config { get; }
    public Device Device => CPU;

    public Tensor Forward(Tensor inputIds, IDecodingState? state = null)
    {
        using var scope = NewDisposeScope();
        var recurrent = state as State;
        var h = recurrent?.H ?? zeros([inputIds.shape[0], Hidden]);
        var outputs = new List<Tensor>();
        for (var t = 0; t < inputIds.shape[1]; t++)
        {
            h = tanh(h.matmul(recurrence) + embed.index_select(0, inputIds[.., t]));
            outputs.Add(h.matmul(output));
        }
        recurrent?.Replace(h, inputIds.shape[1]);
        return stack(outputs, 1).MoveToOuterDisposeScope();
    }

    public IDecodingState NewState(int batch) => new State();

    public sealed class State : IDecodingState
    {
        public Tensor? H { get; private set; }
        public long Length { get; private set; }

        public void Replace(Tensor h, long tokens)
        {
            var kept = h.clone().DetachFromDisposeScope();
            H?.Dispose();
            H = kept;
            Length += tokens;
        }

        public void Dispose() => H?.Dispose();
    }
}
