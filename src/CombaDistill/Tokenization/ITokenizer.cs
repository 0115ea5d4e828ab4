namespace CombaDistill.Tokenization;

/// <summary>
/// One interface over SentencePiece, Llama 3 tiktoken and llama2.c vocabularies. BOS and EOS are
/// never added implicitly: callers say whether they want BOS.
/// </summary>
public interface ITokenizer
{
    int VocabSize { get; }
    int BosId { get; }
    int EosId { get; }
    /// <summary>A short description of the kind and source file, for inspect and reports.</summary>
    string Description { get; }

    int[] Encode(string text, bool addBos);

    /// <summary>Decodes ids to text; BOS/EOS and other control tokens are dropped.</summary>
    string Decode(IReadOnlyList<int> ids);

    /// <summary>The token as its vocabulary writes it (e.g. "&lt;s&gt;"), for reports; null where the tokenizer does not keep it.</summary>
    string? TokenText(int id) => null;

    /// <summary>The special tokens in use, for inspect and reports: "BOS &lt;s&gt; = 1, EOS &lt;/s&gt; = 2".</summary>
    string SpecialTokensInUse() =>
        string.Join(", ", new[] { ("BOS", BosId), ("EOS", EosId) }.Select(t => TokenText(t.Item2) is { } text ? $"{t.Item1} {text} = {t.Item2}" : $"{t.Item1} = {t.Item2}"));
}
