using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;
using System.Text.RegularExpressions;

namespace CombaDistill.IO;

/// <summary>
/// Binds a JSON configuration object such as config.json onto a record with System.Text.Json. The rules every such
/// file follows: names are snake_case; fields the record does not declare are ignored, unread (Hugging Face configs
/// carry many this project never uses); JSON null reads as a missing field, so the property keeps its initialiser; an
/// integer may be written as a whole number with a point (4096.0); strings are never read as numbers. A declared field
/// of the wrong type is an <see cref="InvalidInputException"/> naming the file and the field ("field 'hidden_size'
/// must be an integer"), even where the model type then ignores its value. Ranges and rules between fields are each
/// record's own validation pass.
/// </summary>
public static partial class JsonConfig
{
    /// <summary>Options for records whose property names map to snake_case fields.</summary>
    public static readonly JsonSerializerOptions SnakeCase = Options(JsonNamingPolicy.SnakeCaseLower);

    /// <summary>Options with this project's converters and the given naming policy.</summary>
    public static JsonSerializerOptions Options(JsonNamingPolicy naming) => new()
    {
        PropertyNamingPolicy = naming,
        TypeInfoResolver = new DefaultJsonTypeInfoResolver(),
        Converters = { new Int32Converter(), new DoubleConverter(), new BooleanConverter(), new StringConverter() },
    };

    /// <summary>Binds <paramref name="json"/> onto <typeparamref name="T"/>; <paramref name="path"/> names the file in errors.</summary>
    public static T Bind<T>(JsonObject json, string? path, JsonSerializerOptions options) where T : class
    {
        try
        {
            return Projected(json, options.GetTypeInfo(typeof(T)), path, "").Deserialize<T>(options) ?? throw new InvalidInputException(path, "is not a JSON object");
        }
        catch (JsonException e)
        {
            var field = FieldOf(e.Path);
            var problem = e is FieldException ? e.Message : Expected(options, typeof(T), e.Path);
            throw new InvalidInputException(path, field.Length == 0 ? problem : $"field '{field}' {problem}", e);
        }
        catch (InvalidOperationException e)
        {
            // System.Text.Json's reader on a string that is not valid UTF-16 (a lone surrogate escape)
            throw new InvalidInputException(path, $"a field the file gives is not valid Unicode ({Bounded.Text(e.Message, 160)})", e);
        }
    }

    /// <summary>A converter's refusal of a value; its message is the problem ("must be a token id or ...").</summary>
    internal sealed class FieldException(string problem) : JsonException(problem);

    /// <summary>
    /// A copy of <paramref name="json"/> with only the fields the record declares (in nested records too) and none whose
    /// value is null: a field nobody reads is never touched, however malformed. A string that is no valid UTF-16 (a
    /// lone surrogate escape) in a declared field is refused by name.
    /// </summary>
    static JsonObject Projected(JsonObject json, JsonTypeInfo record, string? path, string prefix)
    {
        var copy = new JsonObject();
        foreach (var property in record.Properties)
        {
            if (json[property.Name] is not { } value) continue;
            var field = prefix + property.Name;
            var type = Nullable.GetUnderlyingType(property.PropertyType) ?? property.PropertyType;
            if (value is JsonObject nested && property.CustomConverter is null && record.Options.GetTypeInfo(type).Kind == JsonTypeInfoKind.Object)
            {
                copy[property.Name] = Projected(nested, record.Options.GetTypeInfo(type), path, field + ".");
                continue;
            }
            RefuseBrokenStrings(value, path, field);
            copy[property.Name] = value.DeepClone();
        }
        return copy;
    }

    static void RefuseBrokenStrings(JsonNode node, string? path, string field)
    {
        switch (node)
        {
            case JsonObject o:
                foreach (var (_, value) in o) if (value is not null) RefuseBrokenStrings(value, path, field);
                break;
            case JsonArray a:
                foreach (var value in a) if (value is not null) RefuseBrokenStrings(value, path, field);
                break;
            case JsonValue v when v.GetValueKind() == JsonValueKind.String:
                try
                {
                    v.GetValue<string>();
                }
                catch (InvalidOperationException)
                {
                    throw new InvalidInputException(path, $"field '{field}' is not valid Unicode (a lone surrogate escape)");
                }
                break;
        }
    }

    /// <summary>"$.rope_scaling.factor" → "rope_scaling.factor"; "$.eos_token_id[1]" → "eos_token_id[1]".</summary>
    static string FieldOf(string? jsonPath) => jsonPath is null ? "" : PathSegment().Replace(jsonPath.TrimStart('$'), m =>
        m.Groups["index"].Success ? m.Value : "." + (m.Groups["name"].Success ? m.Groups["name"].Value : m.Groups["quoted"].Value)).TrimStart('.');

    /// <summary>What the property at <paramref name="jsonPath"/> must be, found by walking the record's properties.</summary>
    static string Expected(JsonSerializerOptions options, Type type, string? jsonPath)
    {
        foreach (Match segment in PathSegment().Matches(jsonPath ?? ""))
        {
            type = Nullable.GetUnderlyingType(type) ?? type;
            if (segment.Groups["index"].Success)
            {
                type = type.IsArray ? type.GetElementType()! : type.GetGenericArguments().FirstOrDefault() ?? typeof(object);
                continue;
            }
            var name = segment.Groups["name"].Success ? segment.Groups["name"].Value : segment.Groups["quoted"].Value;
            var property = options.GetTypeInfo(type).Properties.FirstOrDefault(p => p.Name == name);
            if (property is null) return "has the wrong type";
            type = property.PropertyType;
        }
        type = Nullable.GetUnderlyingType(type) ?? type;
        return type == typeof(int) || type == typeof(long) ? "must be an integer"
            : type == typeof(double) ? "must be a number"
            : type == typeof(bool) ? "must be true or false"
            : type == typeof(string) ? "must be a string"
            : type.IsArray || type.IsAssignableTo(typeof(System.Collections.IEnumerable)) ? "must be an array"
            : "must be an object";
    }

    [GeneratedRegex(@"\.(?<name>[A-Za-z0-9_]+)|\['(?<quoted>(?:[^']|'')*)'\]|\[(?<index>\d+)\]")]
    private static partial Regex PathSegment();

    /// <summary>An integer; a JSON number with no fractional part (4096.0) counts as one.</summary>
    sealed class Int32Converter : JsonConverter<int>
    {
        public override int Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
            reader.TokenType == JsonTokenType.Number && (reader.TryGetInt32(out var i) || reader.TryGetDouble(out var d) && WholeInt32(d, out i)) ? i
            : throw new FieldException("must be an integer");

        public override void Write(Utf8JsonWriter writer, int value, JsonSerializerOptions options) => writer.WriteNumberValue(value);
    }

    /// <summary>True when <paramref name="d"/> is a whole number inside int's range.</summary>
    internal static bool WholeInt32(double d, out int value)
    {
        var whole = d == Math.Floor(d) && Math.Abs(d) < int.MaxValue;
        value = whole ? (int)d : 0;
        return whole;
    }

    sealed class DoubleConverter : JsonConverter<double>
    {
        public override double Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
            reader.TokenType == JsonTokenType.Number && reader.TryGetDouble(out var d) ? d : throw new FieldException("must be a number");

        public override void Write(Utf8JsonWriter writer, double value, JsonSerializerOptions options) => writer.WriteNumberValue(value);
    }

    sealed class BooleanConverter : JsonConverter<bool>
    {
        public override bool Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) => reader.TokenType switch
        {
            JsonTokenType.True => true,
            JsonTokenType.False => false,
            _ => throw new FieldException("must be true or false"),
        };

        public override void Write(Utf8JsonWriter writer, bool value, JsonSerializerOptions options) => writer.WriteBooleanValue(value);
    }

    sealed class StringConverter : JsonConverter<string>
    {
        public override string Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
        {
            if (reader.TokenType != JsonTokenType.String) throw new FieldException("must be a string");
            try
            {
                return reader.GetString()!;
            }
            catch (InvalidOperationException)
            {
                throw new FieldException("is not valid Unicode");
            }
        }

        public override void Write(Utf8JsonWriter writer, string value, JsonSerializerOptions options) => writer.WriteStringValue(value);
    }
}
