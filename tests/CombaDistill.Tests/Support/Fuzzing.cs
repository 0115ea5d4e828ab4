using System.Diagnostics;
using CombaDistill.IO;

namespace CombaDistill.Tests.Support;

/// <summary>
/// The tally of a fuzzing property: every case must either load or throw the project's input error
/// (<see cref="InvalidInputException"/>); anything else is a crash, a case slower than <see cref="HangSeconds"/> a
/// hang, and a loaded case that breaks the property's own check a wrong acceptance. Cases run in CI by default;
/// <c>COMBADISTILL_FUZZ_SCALE=N</c> runs N times as many, and <c>COMBADISTILL_FUZZ_REPORT=FILE</c> appends each
/// property's counts to FILE (how docs/reliability.md was measured).
/// </summary>
public sealed class Fuzzing(string property)
{
    public const double HangSeconds = 10;

    public static long Cases(long ciCases) =>
        ciCases * (long.TryParse(Environment.GetEnvironmentVariable("COMBADISTILL_FUZZ_SCALE"), out var scale) && scale > 0 ? scale : 1);

    long tried, loaded, refused, crashed, hung, wronglyAccepted;
    readonly List<string> examples = [];

    /// <summary>Runs one case. <paramref name="load"/> returns null when the input loaded and passed the property's check, else what is wrong with what was accepted.</summary>
    public void Case(string description, Func<string?> load)
    {
        var clock = Stopwatch.StartNew();
        string? failure = null;
        try
        {
            var wrong = load();
            if (wrong is null) Interlocked.Increment(ref loaded);
            else { Interlocked.Increment(ref wronglyAccepted); failure = $"accepted though wrong ({wrong})"; }
        }
        catch (InvalidInputException e)
        {
            Interlocked.Increment(ref refused);
            if (e.Message.Length > 2000) failure = $"an error message of {e.Message.Length:N0} characters";
        }
        catch (Exception e)
        {
            Interlocked.Increment(ref crashed);
            failure = $"{e.GetType().Name}: {Bounded.Text(e.Message, 300)}";
        }
        Interlocked.Increment(ref tried);
        if (clock.Elapsed.TotalSeconds > HangSeconds)
        {
            Interlocked.Increment(ref hung);
            failure ??= $"took {clock.Elapsed.TotalSeconds:F0} s";
        }
        if (failure is not null)
            lock (examples) if (examples.Count < 5) examples.Add($"{Bounded.Line(description, 300)} -> {failure}");
    }

    /// <summary>Fails the test unless every case loaded or was refused cleanly, in time; records the counts when asked.</summary>
    public void AssertClean()
    {
        var line = $"{property}\ttried {tried}\tloaded {loaded}\tclean errors {refused}\tcrashes {crashed}\thangs {hung}\twrongly accepted {wronglyAccepted}";
        if (Environment.GetEnvironmentVariable("COMBADISTILL_FUZZ_REPORT") is { Length: > 0 } report)
            lock (typeof(Fuzzing)) File.AppendAllText(report, line + "\n");
        Assert.True(crashed + hung + wronglyAccepted == 0, $"{line}\n{string.Join("\n", examples)}");
        Assert.True(loaded > 0 && refused > 0, $"{line}: a property whose cases all load or all fail tests nothing");
    }
}
