using System.Diagnostics;
using System.Text;

namespace CombaDistill.Tests.Support;

/// <summary>The built CLI run as users run it: its own process, standard output and standard error apart.</summary>
public static class CliProcess
{
    static readonly string CliDll = Path.Combine(AppContext.BaseDirectory, "CombaDistill.Cli.dll");

    /// <summary>The dotnet host running these tests (the GPU host has none on its PATH), else whichever the PATH finds.</summary>
    static readonly string DotnetHost = Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet" ? Environment.ProcessPath! : "dotnet";

    /// <summary>The start information alone, for tests that manage the process themselves (e.g. kill it).</summary>
    public static ProcessStartInfo StartInfo(params string[] args)
    {
        var start = new ProcessStartInfo(DotnetHost)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
            StandardOutputEncoding = new UTF8Encoding(false), StandardErrorEncoding = new UTF8Encoding(false),
        };
        start.ArgumentList.Add(CliDll);
        foreach (var a in args) start.ArgumentList.Add(a);
        // One intra-op thread: CI machines are small and shared, where spinning OpenMP workers only slow a tiny model down.
        start.Environment["OMP_NUM_THREADS"] = "1";
        // Tables are wider than the 80 columns Spectre assumes for redirected output.
        start.Environment["COLUMNS"] = "200";
        return start;
    }

    public static (int Code, string Stdout, string Stderr) Run(params string[] args)
    {
        using var process = Process.Start(StartInfo(args))!;
        var stderr = process.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        var stdout = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, stdout, stderr.Result);
    }
}
