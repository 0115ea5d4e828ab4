using CombaDistill.Modeling.Llama;
using static TorchSharp.torch;

namespace CombaDistill.Modeling.Comba;

/// <summary>
/// A student's decoding state: per Comba layer the fixed-size recurrent state (and short-convolution tail), per kept
/// attention layer a KV cache. A pure Comba student therefore holds the same number of bytes after 10 tokens as
/// after 10 000; only kept attention layers grow with the sequence.
/// </summary>
public sealed class CombaDecodingState : IDecodingState
{
    readonly LayerState[] layers;

    public CombaDecodingState(CombaStudentConfig config, int batch)
    {
        Batch = batch;
        layers = Enumerable.Range(0, config.NumLayers)
            .Select(i => new LayerState(config.IsAttentionLayer(i) ? new KvCache.LayerCache() : null))
            .ToArray();
    }

    public int Batch { get; }

    public long Length { get; private set; }

    public LayerState Layer(int index) => layers[index];

    /// <summary>Bytes of the Comba layers' states: fixed once the first token is read, whatever the sequence length.</summary>
    public long RecurrentBytes => layers.Sum(l => l.RecurrentBytes);

    /// <summary>How many layers hold a KV cache (the kept attention layers).</summary>
    public int CachedLayers => layers.Count(l => l.Cache is not null);

    internal void Advance(long tokens) => Length += tokens;

    public void Dispose()
    {
        foreach (var layer in layers) layer.Dispose();
        Length = 0;
    }

    /// <summary>One layer's share: a Comba state (null before the first token), or a KV cache for a kept attention layer.</summary>
    public sealed class LayerState : IDisposable
    {
        internal LayerState(KvCache.LayerCache? cache) => Cache = cache;

        public CombaState? Recurrent { get; private set; }

        public KvCache.LayerCache? Cache { get; }

        /// <summary>
        /// Replaces the recurrent state with <paramref name="next"/>. Its tensors leave the caller's dispose scope
        /// (the state outlives the forward that produced it); the previous ones are freed.
        /// </summary>
        internal void Replace(CombaState next)
        {
            next.Recurrent.DetachFromDisposeScope();
            next.QConv?.DetachFromDisposeScope();
            next.KConv?.DetachFromDisposeScope();
            next.VConv?.DetachFromDisposeScope();
            Recurrent?.Dispose();
            Recurrent = next;
        }

        internal long RecurrentBytes =>
            Recurrent is { } r ? new[] { r.Recurrent, r.QConv, r.KConv, r.VConv }.Sum(t => t is null ? 0 : t.numel() * t.ElementSize) : 0;

        public void Dispose()
        {
            Recurrent?.Dispose();
            Recurrent = null;
            Cache?.Dispose();
        }
    }
}
