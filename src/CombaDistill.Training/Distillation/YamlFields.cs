using System.Globalization;
using System.Text.RegularExpressions;
using CombaDistill.IO;
using YamlDotNet.RepresentationModel;

namespace CombaDistill.Distillation;

/// <summary>
/// One YAML mapping read field by field. Every value is taken by name, so after reading,
/// <see cref="RejectUnknown"/> can name any field nobody asked for; every error names the file, the line and the
/// field's full path (<c>stages[1].optimizer.lr</c>).
/// </summary>
sealed partial class YamlFields
{
    readonly YamlMappingNode node;
    readonly HashSet<string> asked = new(StringComparer.Ordinal);

    public string File { get; }
    public string FieldPath { get; }

    public YamlFields(YamlMappingNode node, string file, string fieldPath) => (this.node, File, FieldPath) = (node, file, fieldPath);

    public string PathOf(string key) => FieldPath.Length == 0 ? key : $"{FieldPath}.{key}";

    public int Line => (int)node.Start.Line;

    public InvalidInputException Error(string key, string problem) => Error(Find(key) ?? node, PathOf(key), problem);

    public InvalidInputException Error(YamlNode at, string fieldPath, string problem) =>
        new(File, $"line {at.Start.Line}: field '{fieldPath}' {problem}");

    public bool Has(string key)
    {
        asked.Add(key);
        return Find(key) is not null and not YamlScalarNode { Value: "" or "~" or "null", Style: YamlDotNet.Core.ScalarStyle.Plain };
    }

    YamlNode? Find(string key) => node.Children.TryGetValue(new YamlScalarNode(key), out var value) ? value : null;

    YamlNode? Value(string key)
    {
        asked.Add(key);
        return Has(key) ? Find(key) : null;
    }

    public YamlNode Required(string key, string what) =>
        Value(key) ?? throw Error(node, PathOf(key), $"is missing ({what})");

    public string? String(string key) => Value(key) switch
    {
        null => null,
        YamlScalarNode s => s.Value!,
        var n => throw Error(n, PathOf(key), "must be a single value, not a list or mapping"),
    };

    public double? Number(string key)
    {
        var text = String(key);
        if (text is null) return null;
        if (double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) && double.IsFinite(value)) return value;
        throw Error(key, $"is '{text}'; expected a number");
    }

    public long? Integer(string key)
    {
        var text = String(key);
        if (text is null) return null;
        // 1e6, 2_000_000 and 100k are easier to read than 1000000 in a token budget.
        var cleaned = text.Replace("_", "");
        long multiplier = 1;
        if (cleaned.Length > 1 && char.ToLowerInvariant(cleaned[^1]) is 'k' or 'm' or 'g')
        {
            multiplier = char.ToLowerInvariant(cleaned[^1]) switch { 'k' => 1_000, 'm' => 1_000_000, _ => 1_000_000_000 };
            cleaned = cleaned[..^1];
        }
        if (double.TryParse(cleaned, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) && double.IsFinite(value)
            && value * multiplier == Math.Floor(value * multiplier) && Math.Abs(value * multiplier) < 1e18)
            return (long)(value * multiplier);
        throw Error(key, $"is '{text}'; expected a whole number");
    }

    public int? Int32(string key)
    {
        var value = Integer(key);
        if (value is > int.MaxValue or < int.MinValue) throw Error(key, $"is {value}; too large");
        return (int?)value;
    }

    public bool? Bool(string key) => String(key) switch
    {
        null => null,
        "true" or "True" or "yes" => true,
        "false" or "False" or "no" => false,
        var text => throw Error(key, $"is '{text}'; expected true or false"),
    };

    /// <summary>The value must be one of <paramref name="names"/> (snake_case), mapped to <typeparamref name="T"/>.</summary>
    public T? Choice<T>(string key, IReadOnlyDictionary<string, T> names) where T : struct
    {
        var text = String(key);
        if (text is null) return null;
        return names.TryGetValue(text, out var value) ? value
            : throw Error(key, $"is '{text}'; expected one of {string.Join(", ", names.Keys)}");
    }

    public YamlFields? Mapping(string key) => Value(key) switch
    {
        null => null,
        YamlMappingNode m => new YamlFields(m, File, PathOf(key)),
        var n => throw Error(n, PathOf(key), "must be a mapping (key: value lines)"),
    };

    public IReadOnlyList<YamlNode>? List(string key) => Value(key) switch
    {
        null => null,
        YamlSequenceNode s => s.Children.ToList(),
        var n => throw Error(n, PathOf(key), "must be a list"),
    };

    public YamlNode? Raw(string key) => Value(key);

    /// <summary>Throws for the first field that was never asked for, listing the fields this mapping takes.</summary>
    public void RejectUnknown()
    {
        foreach (var (key, _) in node.Children)
        {
            var name = key is YamlScalarNode s ? s.Value ?? "" : key.ToString();
            if (!asked.Contains(name))
                throw Error(key, PathOf(name), $"is not a known field; expected one of: {string.Join(", ", asked.Order(StringComparer.Ordinal))}");
        }
    }

    /// <summary>
    /// A path relative to the recipe's folder; <c>${NAME}</c> and <c>${NAME:-fallback}</c> take environment variables
    /// (e.g. <c>${COMBADISTILL_SHARED:-../shared}</c>, so the same recipe runs on another host).
    /// </summary>
    public string? PathValue(string key)
    {
        var text = String(key);
        if (text is null) return null;
        if (text.Length == 0) throw Error(key, "is empty; expected a path");
        var expanded = EnvironmentReference().Replace(text, m =>
            Environment.GetEnvironmentVariable(m.Groups["name"].Value) is { Length: > 0 } value ? value
            : m.Groups["fallback"].Success ? m.Groups["fallback"].Value
            : throw Error(key, $"uses ${{{m.Groups["name"].Value}}}, which is not set"));
        if (expanded.Contains('\0')) throw Error(key, "holds a NUL character; no path can");
        return Path.GetFullPath(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(File))!, expanded));
    }

    [GeneratedRegex(@"\$\{(?<name>[A-Za-z_][A-Za-z0-9_]*)(:-(?<fallback>[^}]*))?\}")]
    private static partial Regex EnvironmentReference();
}
