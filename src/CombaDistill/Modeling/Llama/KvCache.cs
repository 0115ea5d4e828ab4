using static TorchSharp.torch;

namespace CombaDistill.Modeling.Llama;

/// <summary>
/// Keys (after rotary) and values of every layer for the tokens seen so far, kept per KV head (B,
/// H_kv, T, D). Storage is preallocated and doubled when full, so a decode step writes one slot
/// instead of copying the whole history.
/// </summary>
public sealed class KvCache : IDecodingState
{
    const long InitialCapacity = 256;
    readonly LayerCache[] layers;

    public KvCache(int numLayers, int batch)
    {
        Batch = batch;
        layers = Enumerable.Range(0, numLayers).Select(_ => new LayerCache()).ToArray();
    }

    public int Batch { get; }

    /// <summary>Tokens held (every layer holds the same number after a complete forward).</summary>
    public long Length => layers[0].Length;

    public LayerCache Layer(int index) => layers[index];

    public void Dispose()
    {
        foreach (var layer in layers) layer.Dispose();
    }

    public sealed class LayerCache : IDisposable
    {
        Tensor? keys, values;

        public long Length { get; private set; }

        /// <summary>Appends k, v (B, H_kv, T, D) and returns views of all keys and values so far.</summary>
        public (Tensor keys, Tensor values) Append(Tensor k, Tensor v)
        {
            var needed = Length + k.shape[2];
            if (keys is null || needed > keys.shape[2]) Grow(k, v, needed);
            keys!.narrow(2, Length, k.shape[2]).copy_(k);
            values!.narrow(2, Length, v.shape[2]).copy_(v);
            Length = needed;
            return (keys.narrow(2, 0, Length), values.narrow(2, 0, Length));
        }

        void Grow(Tensor k, Tensor v, long needed)
        {
            var capacity = Math.Max(InitialCapacity, keys is null ? needed : Math.Max(needed, 2 * keys.shape[2]));
            keys = Reallocate(keys, k, capacity);
            values = Reallocate(values, v, capacity);
        }

        Tensor Reallocate(Tensor? old, Tensor like, long capacity)
        {
            // The cache outlives the forward that created it, so its storage leaves that dispose scope.
            var fresh = zeros([like.shape[0], like.shape[1], capacity, like.shape[3]], like.dtype, like.device).DetachFromDisposeScope();
            if (old is not null)
            {
                using var kept = old.narrow(2, 0, Length);
                using var target = fresh.narrow(2, 0, Length);
                target.copy_(kept);
                old.Dispose();
            }
            return fresh;
        }

        public void Dispose()
        {
            keys?.Dispose();
            values?.Dispose();
            keys = values = null;
            Length = 0;
        }
    }
}
