namespace CombaDistill.Runtime;

/// <summary>The process's resident memory as Linux reports it in /proc/self/status (elsewhere .NET's working-set figures).</summary>
public static class ProcessMemory
{
    public readonly record struct Sample(long RssBytes, long PeakRssBytes);

    public static Sample Read()
    {
        const string status = "/proc/self/status";
        if (File.Exists(status))
        {
            long rss = 0, peak = 0;
            foreach (var line in File.ReadLines(status))
            {
                if (line.StartsWith("VmRSS:", StringComparison.Ordinal)) rss = Kilobytes(line) * 1024;
                else if (line.StartsWith("VmHWM:", StringComparison.Ordinal)) peak = Kilobytes(line) * 1024;
            }
            if (rss > 0) return new Sample(rss, Math.Max(peak, rss));
        }
        using var process = System.Diagnostics.Process.GetCurrentProcess();
        return new Sample(process.WorkingSet64, Math.Max(process.PeakWorkingSet64, process.WorkingSet64));
    }

    /// <summary>
    /// Starts the peak (VmHWM) afresh from the current resident size, where Linux allows it (writing 5 to clear_refs,
    /// Linux ≥ 4.0); elsewhere the peak stays the process's. Returns whether it was reset.
    /// </summary>
    public static bool ResetPeak()
    {
        try
        {
            File.WriteAllText("/proc/self/clear_refs", "5");
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return false; }
    }

    static long Kilobytes(string line) =>
        long.TryParse(line.Split(':', 2)[1].Trim().Split(' ')[0], out var kb) ? kb : 0;
}
