namespace CombaDistill.Tokenization;

/// <summary>
/// A tokenizer whose tokens stand for byte strings. Generation prints token by token, and a
/// multi-byte UTF-8 character may be split over several tokens, so streaming works on bytes
/// (see <see cref="StreamingDecoder"/>).
/// </summary>
public interface IByteTokenizer : ITokenizer
{
    /// <summary>
    /// The bytes that <paramref name="id"/> contributes to the decoded text when it follows
    /// <paramref name="previousId"/> (-1 at the start of the text): empty for BOS, EOS and other
    /// control tokens; the leading space of the first piece of a text is dropped like
    /// <see cref="ITokenizer.Decode"/> drops it.
    /// </summary>
    byte[] TokenBytes(int previousId, int id);
}
