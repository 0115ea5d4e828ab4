using static TorchSharp.torch;

namespace CombaDistill.Distillation;

/// <summary>
/// A token stream cut into windows of <c>length + 1</c> ids: window i is stream[i·length, (i+1)·length], the inputs
/// and, shifted by one, their next-token targets; neighbouring windows share one token so no target is lost.
/// </summary>
public sealed class PackedSequences
{
    readonly int[] stream;

    public PackedSequences(int[] stream, int length)
    {
        if (length <= 0) throw new ArgumentOutOfRangeException(nameof(length));
        this.stream = stream;
        Length = length;
        Count = stream.Length <= 1 ? 0 : (stream.Length - 1) / length;
    }

    /// <summary>Input tokens per sequence (a window holds one more).</summary>
    public int Length { get; }

    public int Count { get; }

    public long Tokens => (long)Count * Length;

    public ReadOnlySpan<int> Window(int index) => stream.AsSpan(index * Length, Length + 1);

    /// <summary>Windows <paramref name="indices"/> as one (B, length + 1) int64 tensor on the CPU.</summary>
    public Tensor Batch(IReadOnlyList<int> indices)
    {
        var ids = new long[indices.Count * (Length + 1)];
        for (var b = 0; b < indices.Count; b++)
        {
            var window = Window(indices[b]);
            for (var t = 0; t < window.Length; t++) ids[b * (Length + 1) + t] = window[t];
        }
        return tensor(ids, [indices.Count, Length + 1], ScalarType.Int64);
    }
}

/// <summary>Where a <see cref="ShuffledBatches"/> is: the epoch and how many windows of its permutation were taken.</summary>
public readonly record struct DataPosition(long Epoch, long Offset);

/// <summary>
/// An endless sequence of micro-batches over <see cref="PackedSequences"/>: each epoch visits every window once, in
/// an order fixed by (seed, epoch), so the whole data order is a pure function of the seed and a run resumes at
/// exactly the batch it would have taken next from its <see cref="Position"/>.
/// </summary>
public sealed class ShuffledBatches
{
    readonly PackedSequences sequences;
    readonly long seed;
    int[] order;

    public ShuffledBatches(PackedSequences sequences, long seed, DataPosition start = default)
    {
        if (sequences.Count == 0) throw new ArgumentException("no complete sequence in the data");
        if (start.Offset < 0 || start.Offset > sequences.Count || start.Epoch < 0)
            throw new ArgumentOutOfRangeException(nameof(start), $"position {start} is outside {sequences.Count} windows");
        this.sequences = sequences;
        this.seed = seed;
        Position = start;
        order = Permutation(sequences.Count, seed, start.Epoch);
    }

    public DataPosition Position { get; private set; }

    public PackedSequences Sequences => sequences;

    /// <summary>The next <paramref name="batch"/> windows as (B, length + 1) int64; an epoch's end rolls into the next.</summary>
    public Tensor Next(int batch) => sequences.Batch(NextIndices(batch));

    /// <summary>The indices of the next <paramref name="count"/> windows (what <see cref="Next"/> would batch).</summary>
    public int[] NextIndices(int count)
    {
        var indices = new int[count];
        for (var b = 0; b < count; b++)
        {
            if (Position.Offset == sequences.Count)
            {
                Position = new DataPosition(Position.Epoch + 1, 0);
                order = Permutation(sequences.Count, seed, Position.Epoch);
            }
            indices[b] = order[Position.Offset];
            Position = Position with { Offset = Position.Offset + 1 };
        }
        return indices;
    }

    /// <summary>
    /// A Fisher–Yates shuffle driven by SplitMix64 seeded from (seed, epoch): written out rather than System.Random so
    /// the order is defined here and cannot change with the runtime.
    /// </summary>
    public static int[] Permutation(int count, long seed, long epoch)
    {
        var order = Enumerable.Range(0, count).ToArray();
        var state = (ulong)seed * 0x9E3779B97F4A7C15UL ^ (ulong)(epoch + 1) * 0xBF58476D1CE4E5B9UL;
        for (var i = count - 1; i > 0; i--)
        {
            var j = (int)(SplitMix64(ref state) % (ulong)(i + 1));
            (order[i], order[j]) = (order[j], order[i]);
        }
        return order;
    }

    static ulong SplitMix64(ref ulong state)
    {
        var z = state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
