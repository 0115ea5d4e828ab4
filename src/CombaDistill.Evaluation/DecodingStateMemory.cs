using System.Collections;
using System.Reflection;
using CombaDistill.Modeling;
using static TorchSharp.torch;

namespace CombaDistill.Evaluation;

/// <summary>How many bytes of tensors a decoding state holds: what it has actually allocated, whatever kind of state it is.</summary>
public static class DecodingStateMemory
{
    /// <summary>
    /// Walks the state's fields (private ones included) through this library's types and those of
    /// the state's own assembly, arrays and lists, and adds numel × element size of every live tensor met, each once. A KV cache counts
    /// its whole preallocated capacity, a recurrent state its fixed matrices. Modules are never
    /// entered, so a state that refers to its model does not count the weights. Reflection keeps
    /// this independent of any one state's layout: a new kind of state is measured without change.
    /// </summary>
    public static long TensorBytes(IDecodingState state)
    {
        // Types of this library and of the state's own assembly are entered; the framework's and TorchSharp's are not.
        var assemblies = new HashSet<Assembly> { typeof(IDecodingState).Assembly, state.GetType().Assembly };
        var seen = new HashSet<object>(ReferenceEqualityComparer.Instance);
        long total = 0;
        Visit(state);
        return total;

        void Visit(object? value)
        {
            if (value is null || value is string || value is nn.Module || !seen.Add(value)) return;
            switch (value)
            {
                case Tensor t:
                    if (!t.IsInvalid) total += t.numel() * t.ElementSize;
                    return;
                case Array or IList:
                    foreach (var item in (IEnumerable)value) Visit(item);
                    return;
            }
            var type = value.GetType();
            if (!assemblies.Contains(type.Assembly) || type.IsPrimitive || type.IsEnum) return;
            for (var t = type; t is not null && t != typeof(object); t = t.BaseType)
                foreach (var field in t.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
                    if (!field.FieldType.IsPrimitive && !field.FieldType.IsEnum) Visit(field.GetValue(value));
        }
    }
}
