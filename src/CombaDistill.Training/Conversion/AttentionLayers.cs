using CombaDistill.IO;

namespace CombaDistill.Conversion;

/// <summary>
/// Parses <c>--keep-attention</c>: which layers keep the teacher's softmax attention in a hybrid student.
/// <list type="bullet">
/// <item><c>none</c> (default): every layer becomes Comba.</item>
/// <item><c>all</c>: no layer does; the student is the teacher (a check that conversion itself loses nothing).</item>
/// <item><c>every:N</c>: every N-th layer counting from one, i.e. indices N−1, 2N−1, …; a 16-layer model with
/// <c>every:8</c> keeps 7 and 15, so each block of N layers ends in attention and the last layer is attention
/// when N divides the depth.</item>
/// <item>a comma list of indices and ranges, <c>0,15</c> or <c>0-3,12</c> (0-based, inclusive).</item>
/// </list>
/// </summary>
public static class AttentionLayers
{
    public const string Option = "--keep-attention";

    /// <returns>Distinct layer indices in ascending order.</returns>
    public static int[] Parse(string? spec, int numLayers)
    {
        var text = (spec ?? "none").Trim().ToLowerInvariant();
        if (text is "" or "none") return [];
        if (text == "all") return Enumerable.Range(0, numLayers).ToArray();
        if (text.StartsWith("every:", StringComparison.Ordinal))
        {
            if (!int.TryParse(text["every:".Length..], out var n) || n <= 0)
                throw Bad(spec!, "'every:N' needs a positive whole N");
            return Enumerable.Range(0, numLayers).Where(i => (i + 1) % n == 0).ToArray();
        }

        var layers = new SortedSet<int>();
        foreach (var raw in text.Split(','))
        {
            var part = raw.Trim();
            var dash = part.Length > 1 ? part.IndexOf('-', 1) : -1;
            var (first, last) = dash > 0
                ? (Index(spec!, part[..dash], numLayers), Index(spec!, part[(dash + 1)..], numLayers))
                : (Index(spec!, part, numLayers), Index(spec!, part, numLayers));
            if (last < first) throw Bad(spec!, $"range '{part}' runs backwards");
            for (var i = first; i <= last; i++) layers.Add(i);
        }
        return layers.ToArray();
    }

    static int Index(string spec, string text, int numLayers)
    {
        if (!int.TryParse(text.Trim(), out var index))
            throw Bad(spec, $"'{text.Trim()}' is not a layer index; expected none, all, every:N, or indices such as 0,15 or 0-3");
        if (index < 0 || index >= numLayers)
            throw Bad(spec, $"layer {index} does not exist; the teacher has layers 0 … {numLayers - 1}");
        return index;
    }

    static InvalidInputException Bad(string spec, string problem) => new(null, $"{Option} '{spec}': {problem}");
}
