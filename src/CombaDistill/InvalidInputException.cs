namespace CombaDistill;

/// <summary>
/// Bad user input: a file or field that cannot be used. The message always names the file (and the
/// field or tensor where there is one) and says what is wrong; the CLI prints it as one line.
/// </summary>
public sealed class InvalidInputException : Exception
{
    public string? FilePath { get; }

    /// <summary>
    /// The end of the message that is the tool's own text rather than a quote of the input, such as the list of names a
    /// field takes: the CLI bounds the length of the rest of the message (which may quote a 1 MB key) but prints this
    /// whole, because a list cut in the middle hides the answer. Empty when there is none.
    /// </summary>
    public string Guidance { get; }

    public InvalidInputException(string? filePath, string problem, Exception? inner = null, string guidance = "")
        : base((filePath is null ? problem : $"{filePath}: {problem}") + guidance, inner) => (FilePath, Guidance) = (filePath, guidance);
}
