using System.Text;

namespace CombaDistill;

/// <summary>
/// Whole-file writes that never leave a half-written file: the bytes go to a hidden temporary
/// sibling (same folder, so the rename stays on one filesystem), are flushed to disk, and the
/// temporary is renamed over the target. A failure deletes the temporary and leaves any
/// previous file untouched. (The folder entry itself is not fsynced: .NET cannot open a folder
/// for flushing; the rename is still atomic, only its durability across a power cut is the OS's.)
/// </summary>
public static class AtomicFile
{
    public static void WriteAllText(string path, string text) => WriteAllBytes(path, Encoding.UTF8.GetBytes(text));

    public static void WriteAllBytes(string path, byte[] bytes) => Write(path, s => s.Write(bytes));

    public static void Write(string path, Action<Stream> write)
    {
        var full = Path.GetFullPath(path);
        var folder = Path.GetDirectoryName(full)!;
        if (!Directory.Exists(folder)) throw new InvalidInputException(path, $"folder {folder} does not exist");
        if (Directory.Exists(full)) throw new InvalidInputException(path, "is a folder, not a file");
        RemoveStaleTemporaries(full);
        var temp = TempSibling(full, "tmp");
        try
        {
            // FileShare.None holds an exclusive lock (flock on Unix) while the temporary is written, which tells a
            // live writer's temporary from one a killed process left
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize: 1 << 20))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temp, full, overwrite: true);
        }
        catch
        {
            TryDelete(temp);
            throw;
        }
    }

    /// <summary>Deletes the temporaries of <paramref name="full"/> that killed writers left (no process holds their lock).</summary>
    static void RemoveStaleTemporaries(string full)
    {
        string[] candidates;
        try { candidates = Directory.GetFiles(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.tmp-*"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return; }
        foreach (var candidate in candidates.Where(c => !c.EndsWith(".lock", StringComparison.Ordinal)))
        {
            try
            {
                using var abandoned = new FileStream(candidate, FileMode.Open, FileAccess.ReadWrite, FileShare.None);
                File.Delete(candidate);
            }
            catch (IOException) { }                     // being written by a live process, or already gone
            catch (UnauthorizedAccessException) { }
        }
    }

    /// <summary>A hidden sibling name, <c>.NAME.TAG-XXXXXXXX</c>, not in use.</summary>
    internal static string TempSibling(string fullPath, string tag)
    {
        var folder = Path.GetDirectoryName(fullPath)!;
        var name = Path.GetFileName(fullPath);
        while (true)
        {
            var candidate = Path.Combine(folder, $".{name}.{tag}-{Guid.NewGuid().ToString("N")[..8]}");
            if (!File.Exists(candidate) && !Directory.Exists(candidate)) return candidate;
        }
    }

    internal static void TryDelete(string path)
    {
        try { File.Delete(path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

/// <summary>
/// A folder built in a hidden temporary sibling (<c>.NAME.tmp-XXXXXXXX</c>) and moved into place by <see cref="Commit"/>,
/// so readers see either the old folder or the complete new one. An existing target is replaced only when <c>force</c>
/// was given, and then only when it is a folder this tool could have written: a model folder (config.json and
/// safetensors weights, what import, convert, export and distill all write) or an empty folder. A user's file, or a
/// folder of anything else named by mistake as --out, is refused rather than deleted. Both are checked at Create (so a
/// long job does not fail at the end) and again at Commit. Disposing without Commit deletes the temporary folder.
/// </summary>
/// <remarks>
/// <para>Replacing: on Linux the new folder and the old one trade places in one step (renameat2 with
/// RENAME_EXCHANGE), and the old one, now under the temporary name, is deleted. Where that is not available, the old
/// folder first steps aside as <c>.NAME.old-XXXXXXXX</c>; a process killed between the two renames leaves no NAME,
/// and the next AtomicDirectory for NAME puts the old folder back.</para>
/// <para>Leftovers: each temporary folder has a lock file beside it (<c>.NAME.tmp-XXXXXXXX.lock</c>, holding the
/// process id) that its process keeps locked while it lives; the kernel drops the lock when the process dies however
/// it dies. Creating an AtomicDirectory removes the temporary and stepped-aside folders of NAME whose lock nobody
/// holds, so kills leave nothing that lasts beyond the next run, and a live job's folder is never touched.</para>
/// </remarks>
public sealed class AtomicDirectory : IDisposable
{
    public string FinalPath { get; }
    /// <summary>The temporary folder to write into.</summary>
    public string Path { get; }
    public bool Force { get; }
    public bool Committed { get; private set; }

    readonly FileStream lockStream;
    readonly string lockPath;
    readonly bool ownsTarget;

    AtomicDirectory(string finalPath, string tempPath, bool force, bool ownsTarget, FileStream lockStream, string lockPath) =>
        (FinalPath, Path, Force, this.ownsTarget, this.lockStream, this.lockPath) = (finalPath, tempPath, force, ownsTarget, lockStream, lockPath);

    /// <summary>
    /// A folder for <paramref name="finalPath"/>, a path the user named (--out). With <paramref name="force"/> an existing
    /// model folder or empty folder is replaced; anything else is refused with <see cref="InvalidInputException"/>.
    /// </summary>
    public static AtomicDirectory Create(string finalPath, bool force) => Create(finalPath, force, ownsTarget: false);

    /// <summary>
    /// A folder that replaces whatever is at <paramref name="finalPath"/>: only for a path the caller itself names inside
    /// a folder it owns (a stage's checkpoints/step-N, a shard's result/), whose contents are not a model folder. Never
    /// for a path the user gave.
    /// </summary>
    public static AtomicDirectory CreateReplacingOwn(string finalPath) => Create(finalPath, force: true, ownsTarget: true);

    static AtomicDirectory Create(string finalPath, bool force, bool ownsTarget)
    {
        var full = System.IO.Path.GetFullPath(finalPath.TrimEnd('/', '\\'));
        var parent = System.IO.Path.GetDirectoryName(full)!;
        if (Directory.Exists(parent)) Recover(full);
        RefuseUnlessReplaceable(full, force, ownsTarget);
        Directory.CreateDirectory(parent);
        var temp = AtomicFile.TempSibling(full, "tmp");
        // the lock first: a temporary folder without a lock file is always an orphan
        var lockPath = temp + LockSuffix;
        var lockStream = new FileStream(lockPath, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None);
        try
        {
            lockStream.Write(System.Text.Encoding.ASCII.GetBytes($"{Environment.ProcessId}\n"));
            lockStream.Flush();
            Directory.CreateDirectory(temp);
        }
        catch
        {
            lockStream.Dispose();
            AtomicFile.TryDelete(lockPath);
            throw;
        }
        return new AtomicDirectory(full, temp, force, ownsTarget, lockStream, lockPath);
    }

    const string LockSuffix = ".lock";

    /// <summary>
    /// Fault injection for crash tests: with <c>COMBADISTILL_KILL_AT_COMMIT=NAME</c> the process kills itself (SIGKILL)
    /// when a folder named NAME is about to be committed, the one moment of a run that no timer can hit.
    /// </summary>
    static readonly string? KillAtCommit = Environment.GetEnvironmentVariable("COMBADISTILL_KILL_AT_COMMIT");

    /// <summary>
    /// Puts back a folder a killed replace left stepped aside (NAME missing, <c>.NAME.old-X</c> present), and deletes
    /// the temporary and stepped-aside folders of NAME whose process is gone (their lock is free or missing).
    /// </summary>
    public static void Recover(string finalPath)
    {
        var full = System.IO.Path.GetFullPath(finalPath.TrimEnd('/', '\\'));
        var parent = System.IO.Path.GetDirectoryName(full)!;
        var name = System.IO.Path.GetFileName(full);
        string[] entries;
        try { entries = Directory.GetFileSystemEntries(parent, $".{name}.*"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return; }
        var tmpPrefix = $".{name}.tmp-";
        var oldPrefix = $".{name}.old-";
        foreach (var entry in entries.Order(StringComparer.Ordinal))
        {
            var entryName = System.IO.Path.GetFileName(entry);
            var isTmp = entryName.StartsWith(tmpPrefix, StringComparison.Ordinal);
            var isOld = entryName.StartsWith(oldPrefix, StringComparison.Ordinal);
            if (!(isTmp || isOld) || entryName.EndsWith(LockSuffix, StringComparison.Ordinal)) continue;
            var id = entryName[(isTmp ? tmpPrefix : oldPrefix).Length..];
            var lockFile = System.IO.Path.Combine(parent, tmpPrefix + id + LockSuffix);
            if (!Directory.Exists(entry) && !File.Exists(lockFile)) continue;   // an AtomicFile temporary: AtomicFile judges those
            if (!TryTakeAbandonedLock(lockFile, out var abandoned)) continue;   // its process is alive
            using (abandoned)
            {
                if (isOld && !Directory.Exists(full) && !File.Exists(full))
                {
                    try { Move(entry, full); } catch (IOException) { } catch (UnauthorizedAccessException) { }
                }
                else
                {
                    DeleteEntry(entry);
                }
                if (abandoned is not null && !Exists(System.IO.Path.Combine(parent, tmpPrefix + id)) && !Exists(System.IO.Path.Combine(parent, oldPrefix + id)))
                    AtomicFile.TryDelete(lockFile);
            }
        }
        // a lock file whose folders are both gone (killed between deleting the folder and the lock)
        foreach (var lockFile in entries.Where(e => e.EndsWith(LockSuffix, StringComparison.Ordinal) && System.IO.Path.GetFileName(e).StartsWith(tmpPrefix, StringComparison.Ordinal)))
        {
            var folder = lockFile[..^LockSuffix.Length];
            var old = System.IO.Path.Combine(parent, oldPrefix + System.IO.Path.GetFileName(folder)[tmpPrefix.Length..]);
            if (Exists(folder) || Exists(old)) continue;
            if (TryTakeAbandonedLock(lockFile, out var abandoned) && abandoned is not null)
                using (abandoned) AtomicFile.TryDelete(lockFile);
        }
    }

    /// <summary>
    /// <see cref="Recover"/> for every target in <paramref name="folder"/> that has a temporary or stepped-aside folder
    /// (e.g. a stage's checkpoints folder, where a kill during a save leaves <c>.step-NNNNNNNN.tmp-X</c>).
    /// </summary>
    public static void RecoverAll(string folder)
    {
        string[] entries;
        try { entries = Directory.GetFileSystemEntries(folder, ".*"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return; }
        var names = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var entry in entries)
        {
            var entryName = System.IO.Path.GetFileName(entry);
            var at = Math.Max(entryName.LastIndexOf(".tmp-", StringComparison.Ordinal), entryName.LastIndexOf(".old-", StringComparison.Ordinal));
            if (at > 1 && (Directory.Exists(entry) || entryName.EndsWith(LockSuffix, StringComparison.Ordinal))) names.Add(entryName[1..at]);
        }
        foreach (var name in names) Recover(System.IO.Path.Combine(folder, name));
    }

    /// <summary>True when no live process holds <paramref name="lockFile"/> (it is then held by <paramref name="held"/>, or is missing and <paramref name="held"/> is null).</summary>
    static bool TryTakeAbandonedLock(string lockFile, out FileStream? held)
    {
        held = null;
        try
        {
            held = new FileStream(lockFile, FileMode.Open, FileAccess.ReadWrite, FileShare.None);
            return true;
        }
        catch (FileNotFoundException) { return true; }
        catch (DirectoryNotFoundException) { return true; }
        catch (IOException) { return false; }                     // locked: the process is alive
        catch (UnauthorizedAccessException) { return false; }      // not ours to judge
    }

    static bool Exists(string path) => Directory.Exists(path) || File.Exists(path);

    static void Move(string from, string to)
    {
        if (Directory.Exists(from)) Directory.Move(from, to); else File.Move(from, to);
    }

    static void DeleteEntry(string path)
    {
        try
        {
            if (Directory.Exists(path)) Directory.Delete(path, recursive: true);
            else File.Delete(path);
        }
        catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    public void Commit()
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (Committed) throw new InvalidOperationException($"{FinalPath} was already committed");
        RefuseUnlessReplaceable(FinalPath, Force, ownsTarget);
        if (KillAtCommit is { Length: > 0 } name && System.IO.Path.GetFileName(FinalPath) == name)
            System.Diagnostics.Process.GetCurrentProcess().Kill();   // SIGKILL: nothing after this line runs

        if (Exists(FinalPath) && AtomicRename.TryExchange(Path, FinalPath))
        {
            // the new folder is in place; the old one is now at the temporary path
            Committed = true;
            DeleteEntry(Path);
            ReleaseLock();
            return;
        }
        string? old = null;
        if (Exists(FinalPath))
        {
            // No exchange here: the old folder steps aside (under this replace's id, so Recover can tell whose it is)
            // and comes back if the swap fails.
            old = System.IO.Path.Combine(System.IO.Path.GetDirectoryName(FinalPath)!,
                $".{System.IO.Path.GetFileName(FinalPath)}.old-{System.IO.Path.GetFileName(Path)[$".{System.IO.Path.GetFileName(FinalPath)}.tmp-".Length..]}");
            Move(FinalPath, old);
        }
        try
        {
            Directory.Move(Path, FinalPath);
        }
        catch
        {
            if (old is not null) Move(old, FinalPath);
            throw;
        }
        Committed = true;
        if (old is not null) DeleteEntry(old);
        ReleaseLock();
    }

    bool disposed;

    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        if (!Committed) DeleteEntry(Path);
        ReleaseLock();
    }

    void ReleaseLock()
    {
        // delete before unlocking, so no other process can take the lock of a name about to vanish
        AtomicFile.TryDelete(lockPath);
        lockStream.Dispose();
    }

    static void RefuseUnlessReplaceable(string full, bool force, bool ownsTarget)
    {
        if (!Exists(full)) return;
        if (ownsTarget && force) return;
        const string Rule = "--force replaces only a model folder (config.json and safetensors weights) or an empty folder";
        var why = WhyNotReplaceable(full);
        // without --force, point at --force only where it would help
        if (!force) throw new InvalidInputException(full, why is null ? "exists; use --force to replace it" : $"exists and {why}; choose another output ({Rule})");
        if (why is not null) throw new InvalidInputException(full, $"{why}; {Rule}");
    }

    /// <summary>
    /// Null when <paramref name="full"/> is a folder --force may replace: empty, or holding config.json and safetensors
    /// weights (model.safetensors, or the index of shards), which every model folder this tool writes has; else why not.
    /// </summary>
    /// <remarks>
    /// config.json alone is not enough: it is a common name in folders that have nothing to do with models. A symbolic
    /// link is refused too: the replace would swap the link itself for a folder, which is not what was asked.
    /// </remarks>
    public static string? WhyNotReplaceable(string full)
    {
        var info = new FileInfo(full);
        if (info.LinkTarget is not null) return "is a symbolic link, not a model folder";
        if (File.Exists(full)) return "is a file, not a model folder";
        if (!Directory.EnumerateFileSystemEntries(full).Any()) return null;
        var config = File.Exists(System.IO.Path.Combine(full, "config.json"));
        var weights = File.Exists(System.IO.Path.Combine(full, IO.Checkpoint.SingleFileName)) || File.Exists(System.IO.Path.Combine(full, IO.Checkpoint.IndexFileName));
        return (config, weights) switch
        {
            (true, true) => null,
            (true, false) => $"holds config.json but no {IO.Checkpoint.SingleFileName} or {IO.Checkpoint.IndexFileName}, so it is not a model folder",
            _ => "is not a model folder (no config.json)",
        };
    }
}

/// <summary>renameat2(2) with RENAME_EXCHANGE: two paths trade places atomically (Linux 3.15+, most local filesystems).</summary>
static class AtomicRename
{
    const uint RenameExchange = 2;
    const int AtFdcwd = -100;
    static bool unavailable;

    /// <summary>True when the exchange happened; false where the system or filesystem cannot do it (nothing moved then).</summary>
    public static bool TryExchange(string a, string b)
    {
        if (unavailable || !OperatingSystem.IsLinux()) return false;
        try
        {
            return renameat2(AtFdcwd, a, AtFdcwd, b, RenameExchange) == 0;
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            unavailable = true;   // a C library without renameat2 (glibc before 2.28)
            return false;
        }
    }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    static extern int renameat2(int olddirfd, [System.Runtime.InteropServices.MarshalAs(System.Runtime.InteropServices.UnmanagedType.LPUTF8Str)] string oldpath,
        int newdirfd, [System.Runtime.InteropServices.MarshalAs(System.Runtime.InteropServices.UnmanagedType.LPUTF8Str)] string newpath, uint flags);
}
