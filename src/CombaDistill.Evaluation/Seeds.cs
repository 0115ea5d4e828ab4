namespace CombaDistill.Evaluation;

/// <summary>Seeds for synthetic tasks that are the same in every process (HashCode.Combine is randomised per process).</summary>
static class Seeds
{
    public static int Mix(params int[] parts)
    {
        // FNV-1a over the parts' bytes.
        var hash = 2166136261u;
        foreach (var part in parts)
            for (var shift = 0; shift < 32; shift += 8)
                hash = (hash ^ (byte)(part >> shift)) * 16777619u;
        return (int)hash;
    }
}
