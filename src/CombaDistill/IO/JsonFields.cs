using System.Text.Json.Nodes;

namespace CombaDistill.IO;

/// <summary>
/// Typed fields of a JSON object such as config.json: a missing field (or JSON null) reads as null, a field of the
/// wrong type is an <see cref="InvalidInputException"/> naming the file and the field.
/// </summary>
public static class JsonFields
{
    public static string? String(JsonObject j, string path, string field) => j[field] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        _ => throw new InvalidInputException(path, $"field '{field}' must be a string"),
    };

    /// <summary>An integer; a JSON number with no fractional part (4096.0) counts as one.</summary>
    public static int? Int32(JsonObject j, string path, string field, bool required = false) => j[field] switch
    {
        null when required => throw new InvalidInputException(path, $"field '{field}' is missing"),
        null => null,
        JsonValue v when v.TryGetValue<int>(out var i) => i,
        JsonValue v when v.TryGetValue<double>(out var d) && d == Math.Floor(d) && Math.Abs(d) < int.MaxValue => (int)d,
        _ => throw new InvalidInputException(path, $"field '{field}' must be an integer"),
    };

    public static double? Number(JsonObject j, string path, string field) => j[field] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<double>(out var d) => d,
        _ => throw new InvalidInputException(path, $"field '{field}' must be a number"),
    };

    public static bool? Bool(JsonObject j, string path, string field) => j[field] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<bool>(out var b) => b,
        _ => throw new InvalidInputException(path, $"field '{field}' must be true or false"),
    };
}
