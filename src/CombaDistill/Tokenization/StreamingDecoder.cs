using System.Text;

namespace CombaDistill.Tokenization;

/// <summary>
/// Turns a stream of generated token ids into text as it arrives. A token may end in the middle of
/// a UTF-8 character; those bytes are held back until the character is complete, so the pieces
/// returned by <see cref="Append"/> followed by <see cref="Flush"/> concatenate to exactly
/// <see cref="ITokenizer.Decode"/> of all ids.
/// </summary>
public sealed class StreamingDecoder
{
    readonly ITokenizer tokenizer;
    readonly Decoder utf8 = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false).GetDecoder();
    // Only for tokenizers that cannot give bytes: every id so far, re-decoded on each step.
    readonly List<int>? allIds;
    int previousId;
    int emittedChars;

    /// <param name="previousId">
    /// The token before the first one appended (e.g. the last prompt token), or -1 when the
    /// appended tokens start the text.
    /// </param>
    public StreamingDecoder(ITokenizer tokenizer, int previousId = -1)
    {
        this.tokenizer = tokenizer;
        this.previousId = previousId;
        if (tokenizer is not IByteTokenizer)
        {
            allIds = [];
            if (previousId >= 0) allIds.Add(previousId);
            emittedChars = previousId >= 0 ? tokenizer.Decode(allIds).Length : 0;
        }
    }

    /// <summary>Adds one token and returns the text that is now complete (possibly empty).</summary>
    public string Append(int id)
    {
        if (tokenizer is IByteTokenizer byteTokenizer)
        {
            byte[] bytes = byteTokenizer.TokenBytes(previousId, id);
            previousId = id;
            return Decode(bytes, flush: false);
        }
        allIds!.Add(id);
        string text = tokenizer.Decode(allIds);
        // A trailing U+FFFD may be a character whose remaining bytes have not arrived yet.
        int complete = text.Length;
        while (complete > emittedChars && text[complete - 1] == '\uFFFD') complete--;
        if (complete <= emittedChars) return "";
        string fresh = text[emittedChars..complete];
        emittedChars = complete;
        return fresh;
    }

    /// <summary>Returns what is still held back (incomplete UTF-8 becomes U+FFFD), at the end of generation.</summary>
    public string Flush()
    {
        if (tokenizer is IByteTokenizer) return Decode([], flush: true);
        string text = tokenizer.Decode(allIds!);
        string rest = text.Length > emittedChars ? text[emittedChars..] : "";
        emittedChars = text.Length;
        return rest;
    }

    string Decode(byte[] bytes, bool flush)
    {
        // UTF-8 gives at most one char per byte, plus one U+FFFD per held-back byte on flush.
        var chars = new char[bytes.Length + 4];
        int n = utf8.GetChars(bytes, 0, bytes.Length, chars, 0, flush);
        return new string(chars, 0, n);
    }
}
