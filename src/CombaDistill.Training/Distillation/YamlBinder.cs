using System.Collections;
using System.Globalization;
using System.Reflection;
using CombaDistill.IO;
using YamlDotNet.Core;
using YamlDotNet.Core.Events;
using YamlDotNet.Serialization;
using YamlDotNet.Serialization.NamingConventions;

namespace CombaDistill.Distillation;

/// <summary>
/// A mapping of a YAML file bound by <see cref="YamlBinder"/>: besides its fields it knows its own field path
/// (<c>stages[1].optimizer</c>) and the line of each field, so the validation pass after binding can name both.
/// </summary>
abstract class YamlRecord
{
    [YamlIgnore] public string File { get; set; } = "";
    [YamlIgnore] public string FieldPath { get; set; } = "";
    /// <summary>Where the mapping starts.</summary>
    [YamlIgnore] public long Line { get; set; }
    /// <summary>Where each field's value starts, for every field the file gives (null ones included).</summary>
    [YamlIgnore] public Dictionary<string, long> Lines { get; } = new(StringComparer.Ordinal);

    public string PathOf(string key) => FieldPath.Length == 0 ? key : $"{FieldPath}.{key}";

    /// <summary>An error at the field's line (the mapping's where the field is absent).</summary>
    public InvalidInputException Error(string key, string problem) =>
        new(File, $"line {(Lines.TryGetValue(key, out var line) ? line : Line)}: field '{PathOf(key)}' {problem}");
}

/// <summary>
/// Binds a YAML document onto <see cref="YamlRecord"/> classes with YamlDotNet's deserializer. The rules:
/// <list type="bullet">
/// <item>a field is the snake_case name of a settable property (or its <see cref="YamlMemberAttribute.Alias"/>); any
/// other field is refused, with the list of those the mapping takes; a key given twice is not valid YAML;</item>
/// <item>a plain empty, <c>~</c> or <c>null</c> value reads as absent: the property keeps its initialiser;</item>
/// <item>numbers are invariant-culture and finite; whole numbers (long, int) may use <c>_</c>, an exponent (1e6) or a
/// k, m or g suffix (100k); booleans are true/True/yes or false/False/no; an enum is one of the names
/// <see cref="Choices"/> gives it;</item>
/// <item>a record implementing <see cref="IScalarShorthand"/> may also be written as a single value.</item>
/// </list>
/// Every error is an <see cref="InvalidInputException"/> naming the file, the line and the field's full path.
/// </summary>
sealed class YamlBinder(string file, IReadOnlyDictionary<Type, IReadOnlyDictionary<string, object>> choices)
{
    /// <summary>A record that a single value may stand for (a data file given by its path alone).</summary>
    public interface IScalarShorthand
    {
        void FromScalar(string value);
    }

    /// <summary>A field that is either one name or a list of names (a stage's <c>trainable</c>).</summary>
    public sealed class NameOrList
    {
        public string? Name { get; init; }
        public IReadOnlyList<string>? List { get; init; }
    }

    readonly List<string> path = [];

    bool IsChoice(Type type) => choices.ContainsKey(type);

    string FieldPath => string.Concat(path.Select((segment, i) => i == 0 || segment.StartsWith('[') ? segment : "." + segment));

    InvalidInputException Error(ParsingEvent? at, string problem, string guidance = "") =>
        new(file, $"line {at?.Start.Line ?? 0}: field '{FieldPath}' {problem}", guidance: guidance);

    /// <summary>The longest stretch of a key or value an error quotes: a 1 MB key must not become a 1 MB line.</summary>
    const int MaxQuoted = 80;

    /// <summary>
    /// The refusal of a name that is not among <paramref name="names"/>: "did you mean" first when one is close, then
    /// every name, as guidance the CLI prints whole (the names are ours and few; what was given is cut to a bound).
    /// </summary>
    InvalidInputException NotAmong(ParsingEvent at, string problem, string given, IEnumerable<string> names)
    {
        var list = names.ToList();
        var closest = Spelling.Closest(given, list);
        return Error(at, problem, $"{(closest is null ? "; expected" : $"; did you mean '{closest}'? Expected")} one of: {string.Join(", ", list)}");
    }

    /// <summary>Binds <paramref name="yaml"/>; null unless it is exactly one document holding a mapping.</summary>
    public T? Bind<T>(string yaml) where T : YamlRecord
    {
        var deserializer = new DeserializerBuilder()
            .WithNodeTypeResolver(new DeclaredTypes(), s => s.OnTop())
            .WithNodeDeserializer(new Nodes(this), s => s.OnTop())
            .Build();
        // The whole text is parsed once first, so a syntax error anywhere is reported as one, not as the odd field
        // that a broken structure makes of an earlier line.
        for (var syntax = new Parser(new StringReader(yaml)); syntax.MoveNext();) { }
        var parser = new Parser(new StringReader(yaml));
        parser.Consume<StreamStart>();
        if (!parser.TryConsume<DocumentStart>(out _) || !parser.Accept<MappingStart>(out _)) return null;
        try
        {
            var value = (T?)deserializer.Deserialize(parser, typeof(T));
            parser.Consume<DocumentEnd>();
            return parser.Accept<StreamEnd>(out _) ? value : null;
        }
        catch (YamlException e) when (e.InnerException is InvalidInputException refused)
        {
            // YamlDotNet wraps what a node deserializer throws; the refusal itself is the message.
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(refused);
            throw;
        }
    }

    static readonly Dictionary<Type, Dictionary<string, PropertyInfo>> PropertiesByType = [];

    static Dictionary<string, PropertyInfo> PropertiesOf(Type type)
    {
        lock (PropertiesByType)
        {
            if (!PropertiesByType.TryGetValue(type, out var properties))
            {
                properties = type.GetProperties(BindingFlags.Public | BindingFlags.Instance)
                    .Where(p => p.CanWrite && p.GetCustomAttribute<YamlIgnoreAttribute>() is null)
                    .ToDictionary(p => p.GetCustomAttribute<YamlMemberAttribute>()?.Alias ?? UnderscoredNamingConvention.Instance.Apply(p.Name), StringComparer.Ordinal);
                PropertiesByType[type] = properties;
            }
            return properties;
        }
    }

    static bool IsAbsent(ParsingEvent? e) => e is Scalar { Style: ScalarStyle.Plain, Value: "" or "~" or "null" };

    object Mapping(IParser parser, Type type, Func<IParser, Type, object?> nested)
    {
        var record = (YamlRecord)Activator.CreateInstance(type)!;
        record.File = file;
        record.FieldPath = FieldPath;
        record.Line = parser.Current?.Start.Line ?? 0;
        if (record is IScalarShorthand shorthand && parser.TryConsume<Scalar>(out var single))
        {
            shorthand.FromScalar(single.Value);
            return record;
        }
        if (!parser.TryConsume<MappingStart>(out _)) throw Error(parser.Current, "must be a mapping (key: value lines)");
        var properties = PropertiesOf(type);
        while (!parser.TryConsume<MappingEnd>(out _))
        {
            var key = parser.Consume<Scalar>();
            // Only a known key is nested under, so the path's one unbounded part is this last key.
            path.Add(Bounded.Text(key.Value, MaxQuoted));
            if (!properties.TryGetValue(key.Value, out var property))
                throw NotAmong(key, "is not a known field", key.Value, properties.Keys.Order(StringComparer.Ordinal));
            if (!record.Lines.TryAdd(key.Value, parser.Current?.Start.Line ?? key.Start.Line))
                throw new InvalidInputException(file, $"line {key.Start.Line}: not valid YAML (the key '{key.Value}' is given twice)");
            if (IsAbsent(parser.Current))
                parser.MoveNext();
            else
                property.SetValue(record, Checked(parser, nested, property.PropertyType));
            path.RemoveAt(path.Count - 1);
        }
        return record;
    }

    /// <summary>The nested value, refused when an alias brought a value of another kind than the field takes.</summary>
    object? Checked(IParser parser, Func<IParser, Type, object?> nested, Type type)
    {
        var at = parser.Current;
        var value = nested(parser, type);
        return value is null || type.IsInstanceOfType(value) ? value : throw Error(at, "refers (through an alias) to a value of another kind");
    }

    object List(IParser parser, Type elementType, Func<IParser, Type, object?> nested)
    {
        if (!parser.TryConsume<SequenceStart>(out _)) throw Error(parser.Current, "must be a list");
        var list = (IList)Activator.CreateInstance(typeof(List<>).MakeGenericType(elementType))!;
        for (var i = 0; !parser.TryConsume<SequenceEnd>(out _); i++)
        {
            path.Add($"[{i}]");
            list.Add(Checked(parser, nested, elementType));
            path.RemoveAt(path.Count - 1);
        }
        return list;
    }

    object ScalarValue(IParser parser, Type type)
    {
        if (!parser.TryConsume<Scalar>(out var scalar)) throw Error(parser.Current, "must be a single value, not a list or mapping");
        var text = scalar.Value;
        if (type == typeof(string)) return text;
        if (type == typeof(double)) return Number(text) ?? throw Error(scalar, $"is '{text}'; expected a number");
        if (type == typeof(long) || type == typeof(int))
        {
            var whole = WholeNumber.TryParse(text) ?? throw Error(scalar, $"is '{text}'; expected a whole number");
            if (type == typeof(long)) return whole;
            return whole is >= int.MinValue and <= int.MaxValue ? (int)whole : throw Error(scalar, $"is {whole}; too large");
        }
        if (type == typeof(bool))
            return text switch
            {
                "true" or "True" or "yes" => true,
                "false" or "False" or "no" => false,
                _ => throw Error(scalar, $"is '{text}'; expected true or false"),
            };
        var names = choices[type];
        return names.TryGetValue(text, out var choice) ? choice : throw NotAmong(scalar, $"is '{Bounded.Text(text, MaxQuoted)}'", text, names.Keys);
    }

    /// <summary>A finite number in invariant culture; null for any other text.</summary>
    public static double? Number(string text) =>
        double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) && double.IsFinite(value) ? value : null;

    object NameOrListValue(IParser parser, Func<IParser, Type, object?> nested) => parser.Current switch
    {
        Scalar => new NameOrList { Name = (string)ScalarValue(parser, typeof(string)) },
        SequenceStart => new NameOrList { List = (IReadOnlyList<string>)List(parser, typeof(string), nested) },
        var other => throw Error(other, "must be a name or a list of names"),
    };

    static Type? ListElement(Type type) =>
        type.IsGenericType && type.GetGenericTypeDefinition() is var g && (g == typeof(IReadOnlyList<>) || g == typeof(List<>)) ? type.GetGenericArguments()[0] : null;

    /// <summary>A value is read as the type its field declares; a tag (<c>!!str</c>, <c>!!int</c>) does not change it.</summary>
    sealed class DeclaredTypes : INodeTypeResolver
    {
        public bool Resolve(NodeEvent? nodeEvent, ref Type currentType) => true;
    }

    /// <summary>YamlDotNet's hook: every type a recipe record declares is read here, the rest by YamlDotNet's own deserializers.</summary>
    sealed class Nodes(YamlBinder binder) : INodeDeserializer
    {
        public bool Deserialize(IParser reader, Type expectedType, Func<IParser, Type, object?> nestedObjectDeserializer, out object? value, ObjectDeserializer rootDeserializer)
        {
            var type = Nullable.GetUnderlyingType(expectedType) ?? expectedType;
            value = null;
            if (type.IsAssignableTo(typeof(YamlRecord))) value = binder.Mapping(reader, type, nestedObjectDeserializer);
            else if (type == typeof(NameOrList)) value = binder.NameOrListValue(reader, nestedObjectDeserializer);
            else if (ListElement(type) is { } element) value = binder.List(reader, element, nestedObjectDeserializer);
            else if (type == typeof(string) || type == typeof(double) || type == typeof(long) || type == typeof(int) || type == typeof(bool) || binder.IsChoice(type))
                value = binder.ScalarValue(reader, type);
            else return false;
            return true;
        }
    }
}
