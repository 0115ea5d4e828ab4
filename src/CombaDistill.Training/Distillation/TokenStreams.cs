using System.Text.Json;
using CombaDistill.IO;
using CombaDistill.Tokenization;

namespace CombaDistill.Distillation;

/// <summary>
/// Turns a data file into one stream of token ids: documents (plain-text blocks or JSONL records) each encoded with
/// the teacher's tokenizer as [BOS] ids [EOS] and concatenated; a token file is read as it is.
/// </summary>
public static class TokenStreams
{
    /// <summary>The file's token stream, cut at <see cref="DataSource.MaxTokens"/>.</summary>
    public static int[] Read(DataSource source, ITokenizer tokenizer, DataRecipe options, CancellationToken cancellationToken = default)
    {
        if (source.Format == DataFormat.Tokens) return TokenFile.Read(source.Path, tokenizer.VocabSize, source.MaxTokens);
        var limit = source.MaxTokens ?? long.MaxValue;
        var stream = new List<int>();
        foreach (var document in Documents(source, options.DocumentSeparator))
        {
            cancellationToken.ThrowIfCancellationRequested();
            stream.AddRange(tokenizer.Encode(document, addBos: options.AddBos));
            if (options.AddEos) stream.Add(tokenizer.EosId);
            if (stream.Count >= limit) break;
        }
        if (stream.Count > limit) stream.RemoveRange((int)limit, stream.Count - (int)limit);
        if (stream.Count < 2) throw new InvalidInputException(source.Path, $"holds {stream.Count} token(s); training needs at least a few sequences");
        return stream.ToArray();
    }

    /// <summary>The documents of a text or JSONL file, in file order; blank documents are skipped.</summary>
    public static IEnumerable<string> Documents(DataSource source, string separator) => source.Format switch
    {
        DataFormat.Text => TextDocuments(source.Path, separator),
        DataFormat.Jsonl => JsonlDocuments(source.Path),
        _ => throw new ArgumentException($"{source.Format} data has no documents, only tokens"),
    };

    static IEnumerable<string> TextDocuments(string path, string separator)
    {
        var text = File.ReadAllText(path).ReplaceLineEndings("\n");
        var documents = separator.Length == 0 ? [text] : text.Split(separator);
        foreach (var document in documents)
        {
            var trimmed = document.Trim('\n');
            if (trimmed.Trim().Length > 0) yield return trimmed;
        }
    }

    static IEnumerable<string> JsonlDocuments(string path)
    {
        var number = 0;
        foreach (var line in File.ReadLines(path))
        {
            number++;
            if (line.Trim().Length == 0) continue;
            string? text;
            try
            {
                using var record = JsonDocument.Parse(line);
                text = record.RootElement.ValueKind == JsonValueKind.Object && record.RootElement.TryGetProperty("text", out var field) && field.ValueKind == JsonValueKind.String
                    ? field.GetString()
                    : throw new InvalidInputException(path, $"line {number}: expected an object with a string field 'text'");
            }
            catch (JsonException e)
            {
                throw new InvalidInputException(path, $"line {number}: not valid JSON ({e.Message})", e);
            }
            if (text!.Trim().Length > 0) yield return text;
        }
    }

    /// <summary>The last <paramref name="fraction"/> of <paramref name="stream"/> held out (a contiguous tail, so no window straddles both parts).</summary>
    public static (int[] Train, int[] HeldOut) SplitTail(int[] stream, double fraction)
    {
        if (!(fraction > 0 && fraction < 1)) throw new ArgumentOutOfRangeException(nameof(fraction));
        var heldOut = (int)Math.Round(stream.Length * fraction);
        heldOut = Math.Clamp(heldOut, 2, stream.Length - 2);
        return (stream[..^heldOut], stream[^heldOut..]);
    }
}
