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
        var temp = TempSibling(full, "tmp");
        try
        {
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
/// A folder built in a hidden temporary sibling (<c>.NAME.tmp-XXXXXXXX</c>) and renamed into place
/// by <see cref="Commit"/>, so readers see either the old folder or the complete new one.
/// An existing target is replaced only when <c>force</c> was given (checked at Create so a long job
/// does not fail at the end); disposing without Commit deletes the temporary folder.
/// </summary>
public sealed class AtomicDirectory : IDisposable
{
    public string FinalPath { get; }
    /// <summary>The temporary folder to write into.</summary>
    public string Path { get; }
    public bool Force { get; }
    public bool Committed { get; private set; }

    AtomicDirectory(string finalPath, string tempPath, bool force) => (FinalPath, Path, Force) = (finalPath, tempPath, force);

    public static AtomicDirectory Create(string finalPath, bool force)
    {
        var full = System.IO.Path.GetFullPath(finalPath.TrimEnd('/', '\\'));
        RefuseUnlessForced(full, force);
        var parent = System.IO.Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(parent);
        var temp = AtomicFile.TempSibling(full, "tmp");
        Directory.CreateDirectory(temp);
        return new AtomicDirectory(full, temp, force);
    }

    public void Commit()
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (Committed) throw new InvalidOperationException($"{FinalPath} was already committed");
        RefuseUnlessForced(FinalPath, Force);
        string? old = null;
        if (Directory.Exists(FinalPath) || File.Exists(FinalPath))
        {
            // No rename replaces a folder in one step, so the old one steps aside first and comes back if the swap fails.
            old = AtomicFile.TempSibling(FinalPath, "old");
            if (Directory.Exists(FinalPath)) Directory.Move(FinalPath, old); else File.Move(FinalPath, old);
        }
        try
        {
            Directory.Move(Path, FinalPath);
        }
        catch
        {
            if (old is not null)
            {
                if (Directory.Exists(old)) Directory.Move(old, FinalPath); else File.Move(old, FinalPath);
            }
            throw;
        }
        Committed = true;
        if (old is not null)
        {
            try
            {
                if (Directory.Exists(old)) Directory.Delete(old, recursive: true); else File.Delete(old);
            }
            catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    bool disposed;

    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        if (Committed) return;
        try { Directory.Delete(Path, recursive: true); }
        catch (DirectoryNotFoundException) { }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    static void RefuseUnlessForced(string full, bool force)
    {
        if (!force && (Directory.Exists(full) || File.Exists(full)))
            throw new InvalidInputException(full, "exists; use --force to replace it");
    }
}
