using System.Runtime.InteropServices;
using System.Text;

namespace CombaDistill.IO;

/// <summary>
/// Opens input files only once they are known to be regular files: a FIFO would block the reader forever, a device
/// could be endless, and a dangling symbolic link or a missing permission should be named as such, not surface as
/// a bare FileNotFoundException or UnauthorizedAccessException. Every failure is an <see cref="InvalidInputException"/>.
/// </summary>
public static class InputFile
{
    /// <summary>Throws unless <paramref name="path"/> is (or links to) a regular file this process can open.</summary>
    public static void RequireRegular(string path, string what = "file")
    {
        if (OperatingSystem.IsLinux())
        {
            if (Statx(path, followLinks: true) is { } mode) { CheckMode(path, what, mode); return; }
            var errno = Marshal.GetLastPInvokeError();
            throw errno switch
            {
                Enoent or Enotdir when Statx(path, followLinks: false) is { } linkMode && (linkMode & SIfmt) == SIflnk =>
                    new InvalidInputException(path, $"is a symbolic link to {Bounded.Text(LinkTarget(path), 120)}, which does not exist"),
                Enoent or Enotdir => new InvalidInputException(path, $"{what} not found"),
                Eacces => new InvalidInputException(path, "permission denied"),
                Eloop => new InvalidInputException(path, "symbolic links loop"),
                Enametoolong => new InvalidInputException(path, "path is too long"),
                _ => new InvalidInputException(path, $"cannot be read (errno {errno})"),
            };
        }
        if (Directory.Exists(path)) throw new InvalidInputException(path, $"is a folder; expected a {what}");
        if (!File.Exists(path)) throw new InvalidInputException(path, $"{what} not found");
    }

    /// <summary>Opens a regular file for reading (see <see cref="RequireRegular"/>).</summary>
    public static FileStream OpenRead(string path, string what = "file")
    {
        RequireRegular(path, what);
        try { return IoRetry.Execute(() => new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16)); }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException) { throw new InvalidInputException(path, $"{what} not found", e); }
        catch (UnauthorizedAccessException e) { throw new InvalidInputException(path, "permission denied", e); }
        catch (IOException e) { throw new InvalidInputException(path, $"cannot be read ({e.Message})", e); }
    }

    /// <summary>The whole file, at most <paramref name="maxBytes"/> long.</summary>
    public static byte[] ReadAllBytes(string path, string what = "file", long maxBytes = 1L << 30)
    {
        using var stream = OpenRead(path, what);
        if (stream.Length > maxBytes) throw new InvalidInputException(path, $"is {stream.Length:N0} bytes, over the {maxBytes:N0}-byte limit for a {what}");
        var bytes = new byte[stream.Length];
        try { stream.ReadExactly(bytes); }
        catch (EndOfStreamException e) { throw new InvalidInputException(path, "file shrank while it was read", e); }
        catch (IOException e) { throw new InvalidInputException(path, $"cannot be read ({e.Message})", e); }
        return bytes;
    }

    /// <summary>The whole file as UTF-8 text (a leading byte-order mark is dropped); anything else is refused, naming the byte.</summary>
    public static string ReadAllText(string path, string what = "file", long maxBytes = 1L << 30) =>
        DecodeUtf8(ReadAllBytes(path, what, maxBytes), path);

    /// <summary>
    /// A JSON object from a regular UTF-8 file. JSON errors, and strings that decode to no valid Unicode (an escaped lone
    /// surrogate, which System.Text.Json reports only when the string is read), become <see cref="InvalidInputException"/>s
    /// naming the file; <paramref name="read"/> does the reading so its string accesses are covered too.
    /// </summary>
    public static T ReadJsonObject<T>(string path, string what, Func<System.Text.Json.Nodes.JsonObject, T> read, long maxBytes = 64L << 20)
    {
        var text = ReadAllText(path, what, maxBytes);
        try
        {
            var root = System.Text.Json.Nodes.JsonNode.Parse(text, documentOptions: new System.Text.Json.JsonDocumentOptions { AllowDuplicateProperties = false }) as System.Text.Json.Nodes.JsonObject
                ?? throw new InvalidInputException(path, $"{what} is not a JSON object");
            return read(root);
        }
        catch (System.Text.Json.JsonException e) { throw new InvalidInputException(path, $"not valid JSON ({Bounded.Text(e.Message, 160)})", e); }
        catch (InvalidOperationException e) { throw new InvalidInputException(path, $"a value has the wrong JSON type or is not valid Unicode ({Bounded.Text(e.Message, 160)})", e); }
        catch (FormatException e) { throw new InvalidInputException(path, $"a value is malformed ({Bounded.Text(e.Message, 160)})", e); }
    }

    static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>Strict UTF-8: an invalid byte sequence is an <see cref="InvalidInputException"/> naming its offset.</summary>
    public static string DecodeUtf8(ReadOnlySpan<byte> bytes, string path)
    {
        if (bytes.StartsWith("\uFEFF"u8)) bytes = bytes[3..];
        if (!System.Text.Unicode.Utf8.IsValid(bytes))
        {
            var offset = FirstInvalidUtf8(bytes);
            throw new InvalidInputException(path, $"is not UTF-8 text (invalid byte 0x{bytes[offset]:X2} at offset {offset})");
        }
        return StrictUtf8.GetString(bytes);
    }

    static int FirstInvalidUtf8(ReadOnlySpan<byte> bytes)
    {
        var offset = 0;
        while (offset < bytes.Length)
        {
            var status = System.Text.Rune.DecodeFromUtf8(bytes[offset..], out _, out var consumed);
            if (status != System.Buffers.OperationStatus.Done) return offset;
            offset += consumed;
        }
        return 0;
    }

    static void CheckMode(string path, string what, uint mode)
    {
        switch (mode & SIfmt)
        {
            case SIfreg: return;
            case SIfdir: throw new InvalidInputException(path, $"is a folder; expected a {what}");
            case SIfifo: throw new InvalidInputException(path, $"is a named pipe (FIFO), not a regular {what}");
            case SIfchr or SIfblk: throw new InvalidInputException(path, $"is a device, not a regular {what}");
            case SIfsock: throw new InvalidInputException(path, $"is a socket, not a regular {what}");
            default: throw new InvalidInputException(path, $"is not a regular {what}");
        }
    }

    static string LinkTarget(string path)
    {
        try { return new FileInfo(path).LinkTarget ?? "?"; }
        catch (IOException) { return "?"; }
    }

    const int Enoent = 2, Eacces = 13, Enotdir = 20, Enametoolong = 36, Eloop = 40;
    const uint SIfmt = 0xF000, SIfreg = 0x8000, SIfdir = 0x4000, SIfifo = 0x1000, SIfchr = 0x2000, SIfblk = 0x6000, SIfsock = 0xC000, SIflnk = 0xA000;
    const int AtFdcwd = -100, AtSymlinkNoFollow = 0x100;
    const uint StatxType = 0x1;

    /// <summary>The file's st_mode through statx(2), whose struct has one layout on every Linux architecture; null on failure (errno set).</summary>
    static uint? Statx(string path, bool followLinks)
    {
        Span<byte> buffer = stackalloc byte[256];
        try
        {
            if (statx(AtFdcwd, path, followLinks ? 0 : AtSymlinkNoFollow, StatxType, ref MemoryMarshal.GetReference(buffer)) != 0) return null;
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            // a C library without statx (glibc before 2.28): fall back to what .NET can tell
            Marshal.SetLastPInvokeError(Enoent);
            if (Directory.Exists(path)) return SIfdir;
            return File.Exists(path) ? SIfreg : null;
        }
        return BitConverter.ToUInt16(buffer[28..30]);   // stx_mode, after stx_mask, stx_blksize, stx_attributes, stx_nlink, stx_uid, stx_gid
    }

    [DllImport("libc", SetLastError = true)]
    static extern int statx(int dirfd, [MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags, uint mask, ref byte buffer);
}

/// <summary>Text cut to a bound for messages: a 1 MB tensor name or a 100,000-dimension shape must not become a 1 MB error line.</summary>
public static class Bounded
{
    /// <summary><paramref name="text"/> itself when short enough; else its head and tail around " … (N characters) … ".</summary>
    public static string Text(string? text, int max)
    {
        text ??= "";
        if (text.Length <= max) return text;
        var note = $" … ({text.Length:N0} characters) … ";
        var keep = Math.Max(2, max - note.Length);
        var head = keep * 2 / 3;
        return string.Concat(text.AsSpan(0, head), note, text.AsSpan(text.Length - (keep - head)));
    }

    /// <summary>A shape as [a, b, c], listing at most <paramref name="maxDims"/> dimensions.</summary>
    public static string Shape(IReadOnlyList<long> shape, int maxDims = 8) =>
        shape.Count <= maxDims ? $"[{string.Join(", ", shape)}]" : $"[{string.Join(", ", shape.Take(maxDims))}, … ({shape.Count:N0} dimensions)]";

    /// <summary>One line: control characters (newlines included) become spaces, then the length is bounded.</summary>
    public static string Line(string? text, int max)
    {
        text ??= "";
        var cut = text.Length > 4 * max ? Text(text, 4 * max) : text;
        var sb = new StringBuilder(cut.Length);
        foreach (var c in cut) sb.Append(char.IsControl(c) ? ' ' : c);
        return Text(sb.ToString(), max);
    }
}
