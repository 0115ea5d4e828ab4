using System.Text.Json;

namespace CombaDistill.IO;

/// <summary>JSON Lines: one object per non-blank line, each error naming the file and the 1-based line.</summary>
public static class Jsonl
{
    public static IEnumerable<(int Line, JsonElement Value)> Read(string path)
    {
        var number = 0;
        // strict UTF-8: a byte that is no UTF-8 is refused, naming its offset, rather than read as U+FFFD
        foreach (var raw in InputFile.ReadAllText(path, "JSONL file", maxBytes: Array.MaxLength).ReplaceLineEndings("\n").Split('\n'))
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
                throw new InvalidInputException(path, $"line {number}: not valid JSON ({Bounded.Text(e.Message, 160)})", e);
            }
            if (value.ValueKind != JsonValueKind.Object)
                throw new InvalidInputException(path, $"line {number}: expected a JSON object, got {value.ValueKind}");
            yield return (number, value);
        }
    }
}
