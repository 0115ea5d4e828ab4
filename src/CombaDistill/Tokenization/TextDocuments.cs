using System.Text.Json;
using CombaDistill.IO;

namespace CombaDistill.Tokenization;

/// <summary>
/// The one reader of text data, for distillation and evaluation alike. A file holds documents: a JSONL file one
/// <c>{"text": ...}</c> object per line; any other file blocks of text between separators (no separator: the whole
/// file is one document), with the blank lines around each block removed. Blank documents are skipped.
/// The token stream is the documents in file order, each encoded as [BOS] text [EOS], where BOS and EOS are each the
/// caller's choice: distillation recipes take both by default (<c>add_bos</c>, <c>add_eos</c>), so the student learns
/// where documents end; eval adds BOS only and scores the text as written.
/// </summary>
public static class TextDocuments
{
    /// <summary>The documents of <paramref name="path"/>, in file order; errors name the file and, in JSONL, the line.</summary>
    public static IEnumerable<string> Read(string path, bool jsonl, string separator = "")
    {
        if (!File.Exists(path)) throw new InvalidInputException(path, "data file does not exist");
        InputFile.RequireRegular(path, "data file");
        if (new FileInfo(path).Length == 0) throw new InvalidInputException(path, "data file is empty");
        return jsonl ? JsonlDocuments(path) : TextBlocks(path, separator);
    }

    /// <summary>
    /// Checks that <paramref name="path"/> reads as text (UTF-8 without NUL characters), as <see cref="Read"/> will,
    /// so that a run can refuse bad data before it writes anything.
    /// </summary>
    public static void Check(string path)
    {
        if (!File.Exists(path)) throw new InvalidInputException(path, "data file does not exist");
        _ = ReadText(path);
    }

    /// <summary>The file as text: UTF-8 (docs/recipes.md), and not binary (a NUL byte, as UTF-16 text has, is refused).</summary>
    public static string ReadText(string path)
    {
        var text = InputFile.ReadAllText(path, "data file", maxBytes: Array.MaxLength);
        var nul = text.IndexOf('\0');
        if (nul >= 0) throw new InvalidInputException(path, $"holds a NUL character (at character {nul}): binary data or UTF-16 text, not UTF-8 text");
        return text;
    }

    /// <summary>
    /// The token stream of <paramref name="documents"/>: each encoded as [BOS] text [EOS] (each when asked for),
    /// concatenated, and cut at <paramref name="maxTokens"/>.
    /// </summary>
    public static int[] Encode(IEnumerable<string> documents, ITokenizer tokenizer, bool addBos, bool addEos, long? maxTokens = null,
        CancellationToken cancellationToken = default)
    {
        var limit = maxTokens ?? long.MaxValue;
        var stream = new List<int>();
        foreach (var document in documents)
        {
            cancellationToken.ThrowIfCancellationRequested();
            stream.AddRange(tokenizer.Encode(document, addBos: addBos));
            if (addEos) stream.Add(tokenizer.EosId);
            if (stream.Count >= limit) break;
        }
        if (stream.Count > limit) stream.RemoveRange((int)limit, stream.Count - (int)limit);
        return stream.ToArray();
    }

    static IEnumerable<string> TextBlocks(string path, string separator)
    {
        var text = ReadText(path).ReplaceLineEndings("\n");
        if (string.IsNullOrWhiteSpace(text)) throw new InvalidInputException(path, "data file holds only whitespace");
        var blocks = separator.Length == 0 ? [text] : text.Split(separator);
        foreach (var block in blocks)
        {
            var trimmed = block.Trim('\n');
            if (!string.IsNullOrWhiteSpace(trimmed)) yield return trimmed;
        }
    }

    static IEnumerable<string> JsonlDocuments(string path)
    {
        var any = false;
        foreach (var (line, element) in Jsonl.Read(path))
        {
            if (!element.TryGetProperty("text", out var text) || text.ValueKind != JsonValueKind.String)
                throw new InvalidInputException(path, $"line {line}: field \"text\" is missing or not a string");
            string? document;
            try { document = text.GetString(); }
            catch (InvalidOperationException e) { throw new InvalidInputException(path, $"line {line}: field \"text\" is not valid Unicode", e); }
            if (document is null || string.IsNullOrWhiteSpace(document)) continue;
            any = true;
            yield return document;
        }
        if (!any) throw new InvalidInputException(path, "holds no non-empty \"text\" documents");
    }
}
