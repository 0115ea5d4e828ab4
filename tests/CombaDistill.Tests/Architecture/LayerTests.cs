using System.Reflection;
using System.Reflection.Emit;

namespace CombaDistill.Tests.Architecture;

/// <summary>
/// The layer rule of docs/architecture.md, checked on the compiled assemblies: a namespace uses only its own layer and
/// the layers below it, and each assembly references only the assemblies and packages below it. Every type reference is
/// counted: base types, interfaces, fields, signatures, locals, attributes, and the types, methods and fields that
/// method bodies name (lambdas and async state machines are nested types, so they count for their outer type).
/// </summary>
public class LayerTests
{
    /// <summary>Namespace prefixes (the longest match wins) and their layers, bottom first.</summary>
    static readonly (string Prefix, int Layer)[] Layers =
    [
        ("CombaDistill", 0),                    // AtomicFile, AtomicDirectory, InvalidInputException
        ("CombaDistill.Runtime", 1),            // libtorch, CUDA driver and NVRTC, memory, statistics
        ("CombaDistill.IO", 2),
        ("CombaDistill.Tokenization", 3),
        ("CombaDistill.Ops", 4),
        ("CombaDistill.Modeling", 5),
        ("CombaDistill.Runtime.Parallel", 6),   // NCCL and TCP process groups, workers
        ("CombaDistill.Conversion", 7),
        ("CombaDistill.Distillation", 8),
        ("CombaDistill.Evaluation", 8),
        ("CombaDistill.Export", 9),             // the export command's (in CombaDistill.Training: it uses Conversion and Distillation)
        ("CombaDistill.Cli", 10),
    ];

    /// <summary>For each assembly, the assemblies of this project and the heavy packages it may reference.</summary>
    static readonly Dictionary<string, string[]> AllowedReferences = new()
    {
        ["CombaDistill"] = [],
        ["CombaDistill.Parallel"] = ["CombaDistill"],
        ["CombaDistill.Training"] = ["CombaDistill", "CombaDistill.Parallel", "YamlDotNet", "ScottPlot"],
        ["CombaDistill.Evaluation"] = ["CombaDistill", "ScottPlot"],
        ["CombaDistill.Cli"] = ["CombaDistill", "CombaDistill.Parallel", "CombaDistill.Training", "CombaDistill.Evaluation", "YamlDotNet", "ScottPlot"],
    };

    static readonly string[] Watched = ["CombaDistill", "YamlDotNet", "ScottPlot"];

    static IEnumerable<Assembly> Assemblies() => AllowedReferences.Keys.Select(name => Assembly.Load(name));

    [Fact]
    public void Assemblies_reference_only_the_assemblies_below_them()
    {
        var problems = new List<string>();
        foreach (var assembly in Assemblies())
        {
            var name = assembly.GetName().Name!;
            foreach (var reference in assembly.GetReferencedAssemblies().Select(r => r.Name!))
                if (Watched.Any(w => reference == w || reference.StartsWith(w + ".", StringComparison.Ordinal))
                    && !AllowedReferences[name].Contains(reference))
                    problems.Add($"{name} references {reference}");
        }
        Assert.True(problems.Count == 0, string.Join("\n", problems));
    }

    [Fact]
    public void Namespaces_use_only_their_own_layer_and_the_layers_below()
    {
        var problems = new SortedSet<string>(StringComparer.Ordinal);
        var checkedTypes = 0;
        foreach (var assembly in Assemblies())
            foreach (var type in assembly.GetTypes())
            {
                if (type.Namespace is not { } ns || !ns.StartsWith("CombaDistill", StringComparison.Ordinal)) continue;
                var layer = LayerOf(ns);
                if (layer.Layer < 0) problems.Add($"{ns} ({Outer(type).Name}) is in no layer: place it in LayerTests.Layers and docs/architecture.md");
                checkedTypes++;
                foreach (var used in References(type).SelectMany(Flatten))
                {
                    if (used.Namespace is not { } usedNs || !IsOurs(used)) continue;
                    var usedLayer = LayerOf(usedNs);
                    if (usedLayer.Prefix != layer.Prefix && usedLayer.Layer >= layer.Layer)
                        problems.Add($"{ns} ({Outer(type).Name}) uses {usedNs}.{Outer(used).Name}: layer {layer.Layer} may not use layer {usedLayer.Layer}");
                }
            }
        Assert.True(checkedTypes > 100, $"only {checkedTypes} types were found to check");
        Assert.True(problems.Count == 0, string.Join("\n", problems));
    }

    [Fact]
    public void The_checker_sees_references_made_only_inside_method_bodies()
    {
        // the rule is only as good as the reference walk: a type named only in a lambda's body must be found
        var found = typeof(BodyOnly).GetNestedTypes(Declared).Append(typeof(BodyOnly)).SelectMany(References).SelectMany(Flatten).ToHashSet();
        Assert.Contains(typeof(AtomicFile), found);
        Assert.Contains(typeof(CombaDistill.Runtime.Statistics), found);
    }

    static class BodyOnly
    {
        public static Func<string, bool> Probe() => path =>
        {
            AtomicFile.WriteAllText(path, "");
            return CombaDistill.Runtime.Statistics.Median([1.0]) > 0;
        };
    }

    static bool IsOurs(Type type) => type.Assembly.GetName().Name is { } a && AllowedReferences.ContainsKey(a);

    /// <summary>The longest prefix that names the namespace; the root matches only itself, so a new namespace must be placed.</summary>
    static (string Prefix, int Layer) LayerOf(string ns) =>
        Layers.Where(l => ns == l.Prefix || (l.Layer > 0 && ns.StartsWith(l.Prefix + ".", StringComparison.Ordinal)))
            .DefaultIfEmpty((Prefix: ns, Layer: -1)).MaxBy(l => l.Prefix.Length);

    static Type Outer(Type type)
    {
        while (type.DeclaringType is { } d) type = d;
        return type;
    }

    /// <summary>A type with its element type, its generic arguments and their parts.</summary>
    static IEnumerable<Type> Flatten(Type? type)
    {
        if (type is null || type.IsGenericParameter) yield break;
        if (type.HasElementType)
        {
            foreach (var t in Flatten(type.GetElementType())) yield return t;
            yield break;
        }
        yield return type.IsGenericType ? type.GetGenericTypeDefinition() : type;
        if (type.IsGenericType)
            foreach (var argument in type.GetGenericArguments())
                foreach (var t in Flatten(argument)) yield return t;
    }

    const BindingFlags Declared = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance |
                                  BindingFlags.Static | BindingFlags.DeclaredOnly;

    static IEnumerable<Type?> References(Type type)
    {
        yield return type.BaseType;
        foreach (var i in type.GetInterfaces()) yield return i;
        foreach (var a in type.CustomAttributes) yield return a.AttributeType;
        foreach (var f in type.GetFields(Declared)) yield return f.FieldType;
        foreach (var p in type.GetProperties(Declared)) yield return p.PropertyType;
        foreach (var method in type.GetMethods(Declared).Cast<MethodBase>().Concat(type.GetConstructors(Declared)))
        {
            foreach (var t in Signature(method)) yield return t;
            foreach (var a in method.CustomAttributes) yield return a.AttributeType;
            if (method.GetMethodBody() is not { } body) continue;
            foreach (var local in body.LocalVariables) yield return local.LocalType;
            foreach (var clause in body.ExceptionHandlingClauses)
                if (clause.Flags == ExceptionHandlingClauseOptions.Clause) yield return clause.CatchType;
            var typeArguments = type.IsGenericType ? type.GetGenericArguments() : null;
            var methodArguments = method.IsGenericMethod ? method.GetGenericArguments() : null;
            foreach (var token in Tokens(body.GetILAsByteArray()!))
            {
                var member = method.Module.ResolveMember(token, typeArguments, methodArguments);
                switch (member)
                {
                    case Type t: yield return t; break;
                    case MethodBase m:
                        yield return m.DeclaringType;
                        foreach (var t in Signature(m)) yield return t;
                        if (m.IsGenericMethod) foreach (var t in m.GetGenericArguments()) yield return t;
                        break;
                    case FieldInfo f: yield return f.DeclaringType; yield return f.FieldType; break;
                }
            }
        }
    }

    static IEnumerable<Type> Signature(MethodBase method)
    {
        if (method is MethodInfo info) yield return info.ReturnType;
        foreach (var p in method.GetParameters()) yield return p.ParameterType;
    }

    static readonly Dictionary<short, OpCode> OpCodesByValue = typeof(OpCodes)
        .GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(f => (OpCode)f.GetValue(null)!)
        .ToDictionary(o => o.Value);

    /// <summary>The metadata tokens of a method body's type, method and field operands.</summary>
    static IEnumerable<int> Tokens(byte[] il)
    {
        for (var at = 0; at < il.Length;)
        {
            short value = il[at++];
            if (value == 0xFE) value = unchecked((short)(0xFE00 | il[at++]));
            var op = OpCodesByValue[value];
            switch (op.OperandType)
            {
                case OperandType.InlineType or OperandType.InlineMethod or OperandType.InlineField or OperandType.InlineTok:
                    yield return BitConverter.ToInt32(il, at);
                    at += 4;
                    break;
                case OperandType.InlineNone: break;
                case OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar: at += 1; break;
                case OperandType.InlineVar: at += 2; break;
                case OperandType.InlineI8 or OperandType.InlineR: at += 8; break;
                case OperandType.InlineSwitch: at += 4 + 4 * BitConverter.ToInt32(il, at); break;
                default: at += 4; break;   // InlineI, InlineBrTarget, InlineSig, InlineString, ShortInlineR
            }
        }
    }
}
