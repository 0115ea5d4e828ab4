namespace CombaDistill.IO;

/// <summary>Checks on output paths the user names, made before any work starts so that a typo fails in a second, not after an hour.</summary>
public static class OutputPath
{
    /// <summary>
    /// Throws unless <paramref name="path"/> is a folder or does not exist yet: a file there would otherwise surface late
    /// as a bare "file already exists" I/O error when the folder is created.
    /// </summary>
    /// <param name="option">the option that named it (--out, --run-dir), for the message</param>
    public static void RequireFolder(string path, string option)
    {
        if (File.Exists(path)) throw new InvalidInputException(path, $"is a file; {option} must be a folder");
    }
}
