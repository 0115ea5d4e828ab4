using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace CombaDistill.Runtime.Parallel;

/// <summary>
/// Who this process is in a data-parallel job, as its launcher wrote it into the environment:
/// <c>COMBADISTILL_RANK</c>, <c>COMBADISTILL_WORLD_SIZE</c>, <c>COMBADISTILL_RENDEZVOUS</c> (a folder only this job
/// uses) and <c>COMBADISTILL_LAUNCHER_PID</c> (optional: the process to outlive no longer than).
/// </summary>
public sealed record Worker(int Rank, int WorldSize, string RendezvousFolder, int? LauncherPid)
{
    public const string RankVariable = "COMBADISTILL_RANK", WorldSizeVariable = "COMBADISTILL_WORLD_SIZE",
        RendezvousVariable = "COMBADISTILL_RENDEZVOUS", LauncherVariable = "COMBADISTILL_LAUNCHER_PID",
        TimeoutVariable = "COMBADISTILL_COLLECTIVE_TIMEOUT";

    /// <summary>How long a rank waits for the others (to start, to answer a collective) before failing; <c>COMBADISTILL_COLLECTIVE_TIMEOUT</c> seconds overrides.</summary>
    public static TimeSpan DefaultTimeout => Environment.GetEnvironmentVariable(TimeoutVariable) is { Length: > 0 } s
        ? (double.TryParse(s, System.Globalization.CultureInfo.InvariantCulture, out var seconds) && seconds > 0 ? TimeSpan.FromSeconds(seconds)
            : throw new ArgumentException($"{TimeoutVariable} is '{s}'; expected a positive number of seconds"))
        : TimeSpan.FromMinutes(30);

    /// <summary>This process's identity, or null when it was not started as a worker.</summary>
    public static Worker? FromEnvironment()
    {
        if (Environment.GetEnvironmentVariable(RankVariable) is not { Length: > 0 } rankText) return null;
        int Read(string name, string? text) => int.TryParse(text, out var v) && v >= 0 ? v
            : throw new ArgumentException($"{name} is '{text}'; expected a non-negative integer");
        var rank = Read(RankVariable, rankText);
        var world = Read(WorldSizeVariable, Environment.GetEnvironmentVariable(WorldSizeVariable));
        if (rank >= world) throw new ArgumentException($"{RankVariable} is {rank}, but {WorldSizeVariable} is {world}");
        var folder = Environment.GetEnvironmentVariable(RendezvousVariable) is { Length: > 0 } f ? f
            : throw new ArgumentException($"{RendezvousVariable} is not set; a worker needs the folder its job meets in");
        int? launcher = Environment.GetEnvironmentVariable(LauncherVariable) is { Length: > 0 } p ? Read(LauncherVariable, p) : null;
        return new Worker(rank, world, folder, launcher);
    }

    /// <summary>The job's process group: NCCL for a CUDA device, loopback TCP for the CPU.</summary>
    public ProcessGroup Join(Device device)
    {
        var rendezvous = new Rendezvous(RendezvousFolder, DefaultTimeout);
        return device.type == TorchSharp.DeviceType.CUDA
            ? NcclProcessGroup.Create(Rank, WorldSize, device, rendezvous)
            : TcpProcessGroup.Connect(Rank, WorldSize, rendezvous);
    }

    /// <summary>
    /// Calls <paramref name="gone"/> (from a background thread) if the launcher exits first: a worker must not outlive
    /// its job, e.g. waiting forever in a collective after the launcher was killed.
    /// </summary>
    public void WatchLauncher(Action gone)
    {
        if (LauncherPid is not { } pid) return;
        var thread = new Thread(() =>
        {
            // Orphaned, a process is re-parented (to init or a subreaper), so its parent id changes.
            while (getppid() == pid) Thread.Sleep(500);
            gone();
        }) { IsBackground = true, Name = "launcher watch" };
        thread.Start();
    }

    [DllImport("libc.so.6")]
    static extern int getppid();
}
