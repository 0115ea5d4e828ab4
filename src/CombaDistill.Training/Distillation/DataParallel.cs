using CombaDistill.IO;
using CombaDistill.Runtime.Parallel;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CombaDistill.Distillation;

/// <summary>
/// How a stage's optimizer step is shared by the ranks of a data-parallel job. The recipe's global batch stays what
/// it is for one process — micro_batch × accumulation sequences per step, drawn in the same seeded order — and every
/// rank draws all of it, so all stay at the same data position; rank r then trains on its contiguous share of
/// micro_batch × accumulation / W sequences, in micro-batches of at most micro_batch. Each micro-batch's loss is a
/// mean over its tokens, weighted by its share of the rank's sequences; averaging the ranks' gradients then gives
/// the gradient of the mean over the whole global batch, as one process computes it, up to the order of the sums.
/// </summary>
public static class DataParallel
{
    /// <summary>Every stage's global batch must split evenly, or ranks would weigh their sequences differently.</summary>
    public static void Check(Recipe recipe, int worldSize)
    {
        if (worldSize < 1) throw new ArgumentOutOfRangeException(nameof(worldSize));
        for (var i = 0; i < recipe.Stages.Count; i++)
        {
            var stage = recipe.Stages[i];
            var global = stage.MicroBatch * stage.Accumulation;
            if (global % worldSize != 0)
                throw new InvalidInputException(recipe.SourcePath,
                    $"stage '{stage.Name}': micro_batch × accumulation = {global} sequences per step do not split evenly over {worldSize} workers " +
                    $"(set 'stages[{i}].accumulation' so that the product is a multiple of {worldSize})");
        }
    }

    /// <summary>Rank <paramref name="rank"/>'s sequences of a global batch of <paramref name="globalSequences"/>.</summary>
    public static Range Share(int globalSequences, int rank, int worldSize)
    {
        if (globalSequences % worldSize != 0) throw new ArgumentException($"{globalSequences} sequences do not split over {worldSize} ranks");
        var size = globalSequences / worldSize;
        return new Range(rank * size, (rank + 1) * size);
    }

    /// <summary>A share cut into micro-batches of <paramref name="microBatch"/>, the last one possibly smaller.</summary>
    public static IReadOnlyList<int> MicroBatches(int shareSequences, int microBatch) =>
        Enumerable.Range(0, (shareSequences + microBatch - 1) / microBatch).Select(i => Math.Min(microBatch, shareSequences - i * microBatch)).ToArray();
}

/// <summary>
/// Averages the gradients of a set of parameters over a process group, a few large buckets at a time rather than one
/// collective per tensor: gradients of one dtype are copied into a flat buffer of up to <c>bucketBytes</c>, reduced in
/// place, and copied back. Parameters without a gradient are left out; ranks run the same graph, so they agree.
/// </summary>
public sealed class GradientAverager(ProcessGroup group, IReadOnlyList<Parameter> parameters, long bucketBytes = 256L << 20)
{
    /// <summary>Replaces each parameter's gradient by the mean of all ranks' (identical afterwards on every rank).</summary>
    public void Average()
    {
        if (group.IsSingle) return;
        using var scope = NewDisposeScope();
        var grads = parameters.Select(p => p.grad).OfType<Tensor>().ToList();
        foreach (var bucket in Buckets(grads))
        {
            if (bucket.Count == 1 && bucket[0].is_contiguous())
            {
                group.AllReduce(bucket[0], ReduceOp.Average);
                continue;
            }
            var flat = cat(bucket.Select(g => g.flatten()).ToList());
            group.AllReduce(flat, ReduceOp.Average);
            long offset = 0;
            using (no_grad())
            {
                foreach (var grad in bucket)
                {
                    grad.copy_(flat.narrow(0, offset, grad.numel()).view_as(grad));
                    offset += grad.numel();
                }
            }
        }
    }

    /// <summary>Copies rank 0's parameter values to every rank, so all start a stage from identical weights.</summary>
    public void BroadcastParameters()
    {
        if (group.IsSingle) return;
        using var noGrad = no_grad();
        foreach (var p in parameters) group.Broadcast(p, 0);
    }

    IEnumerable<List<Tensor>> Buckets(IEnumerable<Tensor> grads)
    {
        foreach (var sameType in grads.GroupBy(g => g.dtype))
        {
            var bucket = new List<Tensor>();
            long bytes = 0;
            foreach (var grad in sameType)
            {
                var size = grad.numel() * grad.ElementSize;
                if (bucket.Count > 0 && bytes + size > bucketBytes)
                {
                    yield return bucket;
                    (bucket, bytes) = ([], 0);
                }
                bucket.Add(grad);
                bytes += size;
            }
            if (bucket.Count > 0) yield return bucket;
        }
    }
}
