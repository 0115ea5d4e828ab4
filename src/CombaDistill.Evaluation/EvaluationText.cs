using CombaDistill.Tokenization;

namespace CombaDistill.Evaluation;

/// <summary>
/// The text perplexity and agreement are measured on: a plain text file (one document) or JSONL with one
/// {"text": ...} document per line, read by <see cref="TextDocuments"/>. Each document is BOS + its encoding (no EOS:
/// the text is scored as written), and documents follow one another in a single token stream, cut at <c>maxTokens</c>.
/// </summary>
public static class EvaluationText
{
    public static int[] LoadTokens(string path, ITokenizer tokenizer, int maxTokens)
    {
        if (maxTokens < 2) throw new ArgumentException($"max tokens must be at least 2 (one context token and one to predict), got {maxTokens}");
        var documents = TextDocuments.Read(path, jsonl: path.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase));
        var tokens = TextDocuments.Encode(documents, tokenizer, addBos: true, addEos: false, maxTokens);
        if (tokens.Length < 2) throw new InvalidInputException(path, $"holds {tokens.Length} token(s); at least 2 are needed to predict one");
        return tokens;
    }
}
