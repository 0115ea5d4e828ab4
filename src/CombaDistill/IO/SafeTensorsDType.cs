using static TorchSharp.torch;

namespace CombaDistill.IO;

/// <summary>
/// The safetensors dtype names we read and write, and their torch scalar types. Bytes are copied
/// as they are, so every type torch has an equal of costs nothing extra; F8 and unsigned types
/// wider than a byte have no TorchSharp equal and are refused.
/// </summary>
public static class SafeTensorsDType
{
    static readonly (string Name, ScalarType Type, int Size)[] Table =
    [
        ("F64", ScalarType.Float64, 8),
        ("F32", ScalarType.Float32, 4),
        ("F16", ScalarType.Float16, 2),
        ("BF16", ScalarType.BFloat16, 2),
        ("I64", ScalarType.Int64, 8),
        ("I32", ScalarType.Int32, 4),
        ("I16", ScalarType.Int16, 2),
        ("I8", ScalarType.Int8, 1),
        ("U8", ScalarType.Byte, 1),
        ("BOOL", ScalarType.Bool, 1),
    ];

    public static IEnumerable<string> Names => Table.Select(e => e.Name);

    public static bool IsSupported(string name) => Table.Any(e => e.Name == name);

    public static ScalarType ToScalarType(string name) =>
        Table.FirstOrDefault(e => e.Name == name) is { Name: not null } e ? e.Type
        : throw new ArgumentException($"unsupported safetensors dtype '{name}'");

    public static string FromScalarType(ScalarType type) =>
        Table.FirstOrDefault(e => e.Type == type) is { Name: not null } e ? e.Name
        : throw new ArgumentException($"torch dtype {type} has no safetensors equal that we write");

    public static int ItemSize(string name) =>
        Table.FirstOrDefault(e => e.Name == name) is { Name: not null } e ? e.Size
        : throw new ArgumentException($"unsupported safetensors dtype '{name}'");
}

/// <summary>
/// One tensor's header entry. <see cref="Begin"/> and <see cref="End"/> are absolute byte offsets
/// in the file (the header's data_offsets plus 8 plus the header length), so a reader seeks to
/// them directly.
/// </summary>
public sealed record TensorInfo(string Name, string DType, long[] Shape, long Begin, long End)
{
    public ScalarType ScalarType => SafeTensorsDType.ToScalarType(DType);
    public long ByteSize => End - Begin;
    public long NumberOfElements => Shape.Aggregate(1L, (a, b) => a * b);
    public string ShapeText => Bounded.Shape(Shape);
}
