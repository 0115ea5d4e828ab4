namespace CombaDistill.Runtime;

/// <summary>
/// Recognises libtorch's allocation failures, which reach .NET as <see cref="System.Runtime.InteropServices.ExternalException"/>
/// with the allocator's text and a C++ trace, and says them in one line with what to change. A run that stops this way
/// has lost nothing: the newest checkpoint is intact and <c>--resume</c> continues from it.
/// </summary>
public static class MemoryExhaustion
{
    /// <summary>One line for an allocation failure of libtorch's CUDA or CPU allocator, or null for anything else.</summary>
    public static string? Describe(Exception e)
    {
        if (e is not System.Runtime.InteropServices.ExternalException) return null;
        var first = e.Message.Split('\n', 2)[0].Trim();
        if (first.Contains("CUDA out of memory", StringComparison.OrdinalIgnoreCase) || first.Contains("CUDA error: out of memory", StringComparison.OrdinalIgnoreCase))
            return $"the GPU ran out of memory ({Shortened(first)}); lower the stage's micro_batch (and raise accumulation to keep the batch), " +
                   "turn on activation_checkpointing for distillation stages, or spread the run over more GPUs; docs/gpu.md gives the limits measured at the 1B shape";
        if (first.Contains("can't allocate memory", StringComparison.OrdinalIgnoreCase))
            return $"the machine ran out of memory ({Shortened(first)}); lower the stage's micro_batch or sequence_length, or free memory";
        return null;
    }

    // the allocator's sentences that say what was asked for and what the device had; PyTorch's advice on its own
    // allocator settings, and the C++ trace after the first line, are left out
    static string Shortened(string line)
    {
        var sentences = line.Split(". ", StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var kept = sentences.Where((s, i) => i == 0 || s.Contains("allocate", StringComparison.OrdinalIgnoreCase)
                                                    || s.Contains("capacity", StringComparison.OrdinalIgnoreCase)).Take(3);
        return string.Join(". ", kept).TrimEnd('.');
    }
}
