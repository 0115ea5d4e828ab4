using System.Text.Json;
using CombaDistill.IO;
using CombaDistill.Tokenization;

namespace CombaDistill.Evaluation;

/// <summary>
/// The text perplexity and agreement are measured on: a plain text file (one document) or JSONL
/// with one {"text": ...} document per line. Each document is BOS + its encoding, and documents
/// follow one another in a single token stream, cut at <c>maxTokens</c>.
/// </summary>
public static class EvaluationText
{
    public static int[] LoadTokens(string path, ITokenizer tokenizer, int maxTokens)
    {
        if (maxTokens < 2) throw new ArgumentException($"max tokens must be at least 2 (one context token and one to predict), got {maxTokens}");
        var tokens = new List<int>();
        foreach (var document in Documents(path))
        {
            tokens.AddRange(tokenizer.Encode(document, addBos: true));
            if (tokens.Count >= maxTokens) break;
        }
        if (tokens.Count < 2) throw new InvalidInputException(path, $"holds {tokens.Count} token(s); at least 2 are needed to predict one");
        return tokens.Take(maxTokens).ToArray();
    }

    /// <summary>The documents of a .jsonl file (field "text"), or the whole of any other file as one.</summary>
    public static IEnumerable<string> Documents(string path)
    {
        if (!File.Exists(path)) throw new InvalidInputException(path, "data file does not exist");
        if (new FileInfo(path).Length == 0) throw new InvalidInputException(path, "data file is empty");
        if (!path.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase))
        {
            var text = File.ReadAllText(path);
            if (string.IsNullOrWhiteSpace(text)) throw new InvalidInputException(path, "data file holds only whitespace");
            return [text];
        }
        return JsonlDocuments(path);
    }

    static IEnumerable<string> JsonlDocuments(string path)
    {
        var any = false;
        foreach (var (line, element) in Jsonl.Read(path))
        {
            if (!element.TryGetProperty("text", out var text) || text.ValueKind != JsonValueKind.String)
                throw new InvalidInputException(path, $"line {line}: field \"text\" is missing or not a string");
            if (text.GetString() is not { Length: > 0 } document) continue;
            any = true;
            yield return document;
        }
        if (!any) throw new InvalidInputException(path, "holds no non-empty \"text\" documents");
    }
}

/// <summary>JSON Lines: one object per non-blank line, each error naming the file and the 1-based line.</summary>
public static class Jsonl
{
    public static IEnumerable<(int Line, JsonElement Value)> Read(string path)
    {
        var number = 0;
        foreach (var raw in File.ReadLines(path))
        {
            number++;
            if (string.IsNullOrWhiteSpace(raw)) continue;
            JsonElement value;
            try
            {
                using var document = JsonDocument.Parse(raw);
                value = document.RootElement.Clone();
            }
            catch (JsonException e)
            {
                throw new InvalidInputException(path, $"line {number}: not valid JSON ({e.Message})", e);
            }
            if (value.ValueKind != JsonValueKind.Object)
                throw new InvalidInputException(path, $"line {number}: expected a JSON object, got {value.ValueKind}");
            yield return (number, value);
        }
    }
}
