using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.IO;

/// <summary>What <see cref="StateDictLoader.Load"/> copied, and the module entries it left alone.</summary>
public sealed record StateDictLoadReport(int Tensors, long Bytes, IReadOnlyList<string> NotLoaded);

/// <summary>
/// Copies checkpoint tensors into a module's state_dict entries, one tensor at a time. Unlike
/// TorchSharp's load_state_dict, which copies with broadcasting, every name, shape and dtype
/// is checked against the checkpoint headers before anything is copied, so a bad checkpoint
/// leaves the module untouched and the error names the checkpoint and the tensor.
/// </summary>
/// <remarks>
/// Tied weights (e.g. an lm_head sharing the embedding when tie_word_embeddings is set and the
/// checkpoint holds only model.embed_tokens.weight): either pass <c>rename</c> mapping the tied key
/// to the stored one, so both entries receive the same data, or list the tied key in
/// <c>ignoreMissing</c> and tie the parameters after loading.
/// </remarks>
public static class StateDictLoader
{
    /// <param name="dtype">When given, the module's floating-point parameters and buffers are first converted to it.</param>
    /// <param name="rename">Maps a module key to the checkpoint name to read it from; null means "not loaded" (it then keeps its value).</param>
    /// <param name="ignoreMissing">Module keys (or checkpoint names) that may be absent from the checkpoint.</param>
    /// <param name="ignoreUnexpected">Checkpoint names no module entry needs that are not an error (e.g. stored rotary tables).</param>
    public static StateDictLoadReport Load(nn.Module module, Checkpoint ckpt, ScalarType? dtype = null, Func<string, string?>? rename = null,
        IEnumerable<string>? ignoreMissing = null, IEnumerable<string>? ignoreUnexpected = null)
    {
        if (dtype is { } d) module.to(d);
        var mayBeMissing = (ignoreMissing ?? []).ToHashSet(StringComparer.Ordinal);
        var mayBeUnexpected = (ignoreUnexpected ?? []).ToHashSet(StringComparer.Ordinal);
        var entries = module.state_dict();

        var plan = new List<(string Key, string Source, Tensor Target)>();
        var notLoaded = new List<string>();
        var missing = new List<string>();
        var problems = new List<string>();
        foreach (var (key, target) in entries)
        {
            var source = rename is null ? key : rename(key);
            if (source is null) { notLoaded.Add(key); continue; }
            if (!ckpt.Contains(source))
            {
                if (mayBeMissing.Contains(key) || mayBeMissing.Contains(source)) notLoaded.Add(key);
                else missing.Add(source == key ? key : $"{source} (for {key})");
                continue;
            }
            var info = ckpt.Info(source);
            if (!info.Shape.SequenceEqual(target.shape))
                problems.Add($"tensor '{source}' has shape {info.ShapeText} but {key} needs [{string.Join(", ", target.shape)}]");
            else if (!Convertible(info.ScalarType, target.dtype))
                problems.Add($"tensor '{source}' is {info.DType}, which does not convert to {key}'s {target.dtype}");
            else
                plan.Add((key, source, target));
        }
        if (missing.Count > 0) throw new InvalidInputException(ckpt.Path, $"missing tensor{Plural(missing)} {List(missing)}");
        if (problems.Count > 0) throw new InvalidInputException(ckpt.Path, List(problems, "; "));

        var used = plan.Select(p => p.Source).ToHashSet(StringComparer.Ordinal);
        var unexpected = ckpt.Names.Where(n => !used.Contains(n) && !mayBeUnexpected.Contains(n)).Order(StringComparer.Ordinal).ToList();
        if (unexpected.Count > 0) throw new InvalidInputException(ckpt.Path, $"unexpected tensor{Plural(unexpected)} {List(unexpected)} (not in the model)");

        long bytes = 0;
        using (no_grad())
        {
            foreach (var (_, source, target) in plan)
            {
                using var scope = NewDisposeScope();
                var value = ckpt.Read(source, target.dtype, target.device);
                target.copy_(value);
                bytes += ckpt.Info(source).ByteSize;
            }
        }
        return new StateDictLoadReport(plan.Count, bytes, notLoaded);
    }

    /// <summary>Floats convert among floats, integers among integers; bool only to bool.</summary>
    public static bool Convertible(ScalarType from, ScalarType to) => Kind(from) == Kind(to);

    static int Kind(ScalarType t) => t switch
    {
        ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Float32 or ScalarType.Float64 => 0,
        ScalarType.Byte or ScalarType.Int8 or ScalarType.Int16 or ScalarType.Int32 or ScalarType.Int64 => 1,
        ScalarType.Bool => 2,
        _ => 3 + (int)t,
    };

    static string Plural<T>(List<T> items) => items.Count == 1 ? "" : "s";

    static string List(List<string> items, string separator = ", ") =>
        items.Count <= 8 ? string.Join(separator, items) : $"{string.Join(separator, items.Take(8))}{separator}... ({items.Count} in all)";
}
