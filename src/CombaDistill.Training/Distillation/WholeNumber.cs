using System.Globalization;

namespace CombaDistill.Distillation;

/// <summary>
/// Whole numbers as recipes write them and as command-line counts take them: <c>2000</c>, <c>2_000</c>, <c>2k</c>,
/// <c>1.5m</c>, <c>1g</c>, <c>1e6</c>. One parser for both, so a token budget copied from a recipe works on the
/// command line too.
/// </summary>
public static class WholeNumber
{
    /// <summary>The number, or null when <paramref name="text"/> is not a whole number in one of these forms.</summary>
    public static long? TryParse(string text)
    {
        var cleaned = text.Trim().Replace("_", "");
        long multiplier = 1;
        if (cleaned.Length > 1 && char.ToLowerInvariant(cleaned[^1]) is 'k' or 'm' or 'g')
        {
            multiplier = char.ToLowerInvariant(cleaned[^1]) switch { 'k' => 1_000, 'm' => 1_000_000, _ => 1_000_000_000 };
            cleaned = cleaned[..^1];
        }
        return double.TryParse(cleaned, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) && double.IsFinite(value)
            && value * multiplier == Math.Floor(value * multiplier) && Math.Abs(value * multiplier) < 1e18
            ? (long)(value * multiplier) : null;
    }

    /// <summary>The count an option gives; anything else is refused naming the option and the text.</summary>
    public static long Parse(string text, string option) =>
        TryParse(text) ?? throw new InvalidInputException(null, $"{option} '{text}': expected a whole number such as 2000, 2_000, 2k, 1.5m or 1e6");
}
