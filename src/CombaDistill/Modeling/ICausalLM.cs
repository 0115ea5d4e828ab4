using static TorchSharp.torch;

namespace CombaDistill.Modeling;

/// <summary>
/// What a decoder keeps between calls so that it reads each token once: a KV cache for attention,
/// a recurrent state for Comba. Disposing it frees the tensors it holds.
/// </summary>
public interface IDecodingState : IDisposable
{
    /// <summary>Tokens consumed so far; the next token's position.</summary>
    long Length { get; }
}

/// <summary>
/// What the generator and the evaluators read off a model's architecture, whatever the family: the vocabulary, the
/// special ids and the context length.
/// </summary>
public interface ICausalLMConfig
{
    /// <summary>The family as config.json names it (llama, mistral, qwen2).</summary>
    string ModelType { get; }
    int VocabSize { get; }
    int BosTokenId { get; }
    int[] EosTokenIds { get; }
    int MaxPositionEmbeddings { get; }
}

/// <summary>A causal language model the generator and the evaluators can drive: the Llama teacher or a Comba student.</summary>
public interface ICausalLM
{
    /// <summary>The architecture (vocabulary size, special ids, context length).</summary>
    ICausalLMConfig Config { get; }

    /// <summary>Where the weights are; input ids must be on this device.</summary>
    Device Device { get; }

    /// <summary>
    /// Logits (B, T, V) in float32 for input ids (B, T). With a state the ids continue what it has
    /// seen, and it is advanced by T.
    /// </summary>
    Tensor Forward(Tensor inputIds, IDecodingState? state = null);

    /// <summary>An empty state for a batch of <paramref name="batch"/> sequences.</summary>
    IDecodingState NewState(int batch);
}
