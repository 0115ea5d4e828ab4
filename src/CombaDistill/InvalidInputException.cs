namespace CombaDistill;

/// <summary>
/// Bad user input: a file or field that cannot be used. The message always names the file (and the
/// field or tensor where there is one) and says what is wrong; the CLI prints it as one line.
/// </summary>
public sealed class InvalidInputException : Exception
{
    public string? FilePath { get; }

    public InvalidInputException(string? filePath, string problem, Exception? inner = null)
        : base(filePath is null ? problem : $"{filePath}: {problem}", inner) => FilePath = filePath;
}
