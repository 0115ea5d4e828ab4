using System.Diagnostics;
using CombaDistill.IO;

namespace CombaDistill.Runtime.Parallel;

/// <summary>
/// How the workers of one job find each other: a folder that only this job uses (the launcher makes a fresh one),
/// where rank 0 publishes what the others need to connect (NCCL's unique id, a port) as files that appear complete,
/// and the others wait for them.
/// </summary>
public sealed class Rendezvous(string folder, TimeSpan timeout)
{
    public string Folder { get; } = folder;
    public TimeSpan Timeout { get; } = timeout;

    public void Publish(string name, byte[] content)
    {
        Directory.CreateDirectory(Folder);
        AtomicFile.WriteAllBytes(Path.Combine(Folder, name), content);
    }

    /// <summary>The content rank 0 published under <paramref name="name"/>, once it is there.</summary>
    public byte[] Await(string name, int rank)
    {
        var path = Path.Combine(Folder, name);
        var clock = Stopwatch.StartNew();
        while (!File.Exists(path))
        {
            if (clock.Elapsed > Timeout)
                throw new ProcessGroupException($"rank {rank} waited {Timeout.TotalSeconds:F0} s for rank 0 to publish {path}; did rank 0 start?");
            Thread.Sleep(20);
        }
        return File.ReadAllBytes(path);
    }
}
