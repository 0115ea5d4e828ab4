using System.Text.Json;

namespace CombaDistill.IO;

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
