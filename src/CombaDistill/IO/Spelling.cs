namespace CombaDistill.IO;

/// <summary>"Did you mean": the known name closest to a mistyped one, when it is close enough to be a typo.</summary>
public static class Spelling
{
    /// <summary>
    /// The name in <paramref name="known"/> nearest <paramref name="given"/> by <see cref="Distance"/> (case ignored, so
    /// <c>Micro_Batch</c> finds <c>micro_batch</c>), or null when none is within a typo's reach: one edit for names of up
    /// to five characters, a third of the name's length for longer ones. Ties go to the earlier name.
    /// </summary>
    public static string? Closest(string given, IEnumerable<string> known)
    {
        string? best = null;
        var bestDistance = int.MaxValue;
        var lowered = given.ToLowerInvariant();
        foreach (var name in known)
        {
            var reach = Math.Max(1, name.Length / 3);
            // The distance is at least the difference in length: a 1 MB input is rejected here without the table.
            if (Math.Abs(name.Length - given.Length) > reach) continue;
            var distance = Distance(lowered, name.ToLowerInvariant());
            if (distance <= reach && distance < bestDistance) (best, bestDistance) = (name, distance);
        }
        return best;
    }

    /// <summary>
    /// Edit distance where inserting, deleting or replacing a character, or swapping two neighbours, costs 1 each (the
    /// "optimal string alignment" distance): a swap is as common a typo as a missing letter.
    /// </summary>
    public static int Distance(string a, string b)
    {
        // Three rows of the (a.Length + 1) × (b.Length + 1) table: the swap looks two rows back.
        var before = new int[b.Length + 1];
        var previous = new int[b.Length + 1];
        var current = new int[b.Length + 1];
        for (var j = 0; j <= b.Length; j++) previous[j] = j;
        for (var i = 1; i <= a.Length; i++)
        {
            current[0] = i;
            for (var j = 1; j <= b.Length; j++)
            {
                var cost = a[i - 1] == b[j - 1] ? 0 : 1;
                var d = Math.Min(Math.Min(previous[j] + 1, current[j - 1] + 1), previous[j - 1] + cost);
                if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d = Math.Min(d, before[j - 2] + 1);
                current[j] = d;
            }
            (before, previous, current) = (previous, current, before);
        }
        return previous[b.Length];
    }
}
