using System.Reflection;
using System.Text.Json.Serialization;

namespace CombaDistill.Runtime;

/// <summary>What a benchmark column holds; the table formats by it, JSON keeps the raw number.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<BenchUnit>))]
public enum BenchUnit
{
    Text,
    Count,
    Milliseconds,
    Seconds,
    PerSecond,
    /// <summary>a plain factor such as time over a reference's time</summary>
    Ratio,
    /// <summary>a fraction of a whole, shown as a percentage</summary>
    Share,
    Bytes,
    GigabytesPerSecond,
    Teraflops,
    TerabytesPerSecond,
    Flops,
}

/// <summary>One measured quantity: its key in every row, its heading, its unit, and whether the table shows it (JSON always does).</summary>
public sealed record BenchColumn(string Key, string Title, BenchUnit Unit, bool InTable = true);

/// <summary>
/// The one shape of every <c>bench</c> result, for the printed table and the JSON file alike: what ran and where, how
/// it was timed, the settings, and rows of values keyed by the columns (null where a value was not measured, with the
/// reason in the row's <c>note</c> column or in <see cref="Notes"/>). Each benchmark turns its own typed result into
/// this; nothing downstream knows which benchmark made it.
/// </summary>
public sealed record BenchReport
{
    /// <summary>the <c>bench</c> subcommand: load, comba, convert, kernel or distill</summary>
    public required string Benchmark { get; init; }
    public required string Title { get; init; }
    public required string Device { get; init; }
    /// <summary>how times were taken (CUDA events, or the wall clock and why)</summary>
    public required string Timing { get; init; }
    public DateTimeOffset Date { get; init; } = DateTimeOffset.UtcNow;
    /// <summary>this build's version, with the commit it was built from</summary>
    public string Version { get; init; } = ProductVersion;
    public IReadOnlyDictionary<string, object?> Settings { get; init; } = new Dictionary<string, object?>();
    public required IReadOnlyList<BenchColumn> Columns { get; init; }
    public required IReadOnlyList<IReadOnlyDictionary<string, object?>> Rows { get; init; }
    /// <summary>lines that explain the rows (printed under the table)</summary>
    public IReadOnlyList<string> Notes { get; init; } = [];
    /// <summary>false when the benchmark checks a bound and the measurement broke it (the command then exits 1)</summary>
    public bool WithinBounds { get; init; } = true;

    public static string ProductVersion { get; } =
        typeof(BenchReport).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "unknown";

    /// <summary>Checks that every row has a value for every column and nothing else, so table and JSON agree.</summary>
    public BenchReport Checked()
    {
        var keys = Columns.Select(c => c.Key).ToHashSet();
        if (keys.Count != Columns.Count) throw new InvalidOperationException($"bench {Benchmark}: two columns share a key");
        foreach (var row in Rows)
            if (!keys.SetEquals(row.Keys))
                throw new InvalidOperationException($"bench {Benchmark}: a row's keys ({string.Join(", ", row.Keys)}) differ from the columns ({string.Join(", ", keys)})");
        return this;
    }
}
