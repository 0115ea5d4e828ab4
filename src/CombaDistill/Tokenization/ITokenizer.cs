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
}
