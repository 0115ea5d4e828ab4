using System.Globalization;
using CombaDistill.IO;

namespace CombaDistill.Conversion;

/// <summary>Byte counts as people write them: <c>5GB</c>, <c>500MB</c>, <c>2GiB</c>, <c>1048576</c>.</summary>
public static class ByteSize
{
    // Decimal units as Hugging Face's max_shard_size reads them ("5GB" = 5·10⁹), binary ones when spelled KiB/MiB/GiB.
    static readonly (string Suffix, long Factor)[] Units =
    [
        ("KIB", 1L << 10), ("MIB", 1L << 20), ("GIB", 1L << 30), ("TIB", 1L << 40),
        ("KB", 1_000), ("MB", 1_000_000), ("GB", 1_000_000_000), ("TB", 1_000_000_000_000),
        ("B", 1),
    ];

    public static long Parse(string text, string option = "--max-shard-size")
    {
        var s = text.Trim().ToUpperInvariant();
        long factor = 1;
        foreach (var (suffix, f) in Units)
        {
            if (!s.EndsWith(suffix, StringComparison.Ordinal)) continue;
            (s, factor) = (s[..^suffix.Length].Trim(), f);
            break;
        }
        if (!double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var number) || !(number > 0) || double.IsInfinity(number * factor) || number * factor >= long.MaxValue)
            throw new InvalidInputException(null, $"{option} '{text}': expected a positive size such as 5GB, 500MB, 2GiB or a number of bytes");
        return Math.Max(1, (long)Math.Round(number * factor));
    }

    /// <summary>"1.23 GB" (decimal units, three significant digits).</summary>
    public static string Format(long bytes) => bytes switch
    {
        >= 1_000_000_000 => $"{bytes / 1e9:0.##} GB",
        >= 1_000_000 => $"{bytes / 1e6:0.##} MB",
        >= 1_000 => $"{bytes / 1e3:0.##} kB",
        _ => $"{bytes} B",
    };
}
