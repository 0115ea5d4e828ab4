namespace CombaDistill.Modeling;

/// <summary>A stretch of the token stream read in one forward: tokens [Start, Start + Length), of which those from index FirstScored on (within the window) are predicted and scored.</summary>
public readonly record struct TokenWindow(int Start, int Length, int FirstScored);

/// <summary>
/// How a long token stream is cut into forwards no longer than <see cref="Length"/>.
/// Packed (no stride): windows side by side; each window's first token is context only, so one
/// token per window goes unscored and tokens early in a window see little context.
/// Sliding (stride s &lt; length): a window starts every s tokens and scores only the tokens the
/// previous window did not reach, so every token but the first is scored once, and every scored
/// token after the first window sees at least length − s tokens of context; costs about length/s
/// times the forwards. Stride = length is packed.
/// </summary>
public sealed record Windowing(int Length, int? Stride = null)
{
    public string Mode => Stride is null ? "packed" : "sliding";

    /// <summary>
    /// Windows of <paramref name="length"/> + 1 tokens starting every <paramref name="length"/> tokens: neighbours share
    /// one token, so every token after the first is scored once with the same context a training window gives it.
    /// </summary>
    public static Windowing Chained(int length) => new(length + 1, length);

    public void Validate()
    {
        if (Length < 2) throw new ArgumentException($"window length must be at least 2, got {Length}");
        if (Stride is { } s && (s < 1 || s > Length)) throw new ArgumentException($"stride must be in [1, {Length}] (the window length), got {s}");
    }

    public IEnumerable<TokenWindow> Over(int tokenCount)
    {
        Validate();
        if (Stride is not { } stride)
        {
            for (var start = 0; start < tokenCount; start += Length)
            {
                var length = Math.Min(Length, tokenCount - start);
                if (length >= 2) yield return new TokenWindow(start, length, 1);
            }
            yield break;
        }
        // scoredUpTo: every token before it has been scored (token 0 never is: nothing precedes it).
        // A window's own first token has no context inside it, so with stride = length that token is
        // skipped, exactly as in packed windows; any smaller stride overlaps and skips nothing.
        var scoredUpTo = 1;
        for (var start = 0; start + 1 < tokenCount; start += stride)
        {
            var end = Math.Min(start + Length, tokenCount);
            var first = Math.Max(scoredUpTo, start + 1);
            if (end > first) yield return new TokenWindow(start, end - start, first - start);
            scoredUpTo = Math.Max(scoredUpTo, end);
            if (end == tokenCount) yield break;
        }
    }
}
