using System.Buffers.Binary;
using System.Text;

namespace CombaDistill.IO;

/// <summary>
/// Reads a pickle's opcodes without running it and lists every Python global it names (GLOBAL, INST and
/// STACK_GLOBAL). A pickle calls whatever globals it names when Python loads it, so a checkpoint is only accepted
/// when all of them are the few that <c>torch.save</c> of a state dict uses: tensor rebuilding, typed storages and
/// OrderedDict. Everything else in such a pickle is plain data (dicts, lists, tuples, strings, numbers).
/// </summary>
public static class PickleScan
{
    /// <summary>The globals a state dict written by torch.save may name.</summary>
    public static readonly IReadOnlySet<string> AllowedGlobals = new HashSet<string>(StringComparer.Ordinal)
    {
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch.FloatStorage", "torch.HalfStorage", "torch.BFloat16Storage", "torch.DoubleStorage",
        "torch.LongStorage", "torch.IntStorage", "torch.ShortStorage", "torch.CharStorage", "torch.ByteStorage", "torch.BoolStorage",
    };

    /// <summary>
    /// Throws <see cref="InvalidInputException"/> naming <paramref name="path"/> when the pickle names a global outside
    /// <see cref="AllowedGlobals"/>, uses the extension registry, or cannot be read to its STOP.
    /// </summary>
    public static void RequireStateDictOnly(byte[] pickle, string path)
    {
        foreach (var global in Globals(pickle, path))
        {
            if (AllowedGlobals.Contains(global)) continue;
            var what = global == "torch._utils._rebuild_parameter" ? "nn.Parameter objects (a whole model rather than its state dict?)" : global;
            throw new InvalidInputException(path,
                $"refused: its pickle refers to {what}, which is neither a tensor nor a plain container; a pickle can run code when it is loaded, " +
                "so only state dicts of tensors in dicts, lists and tuples are read (convert it to safetensors with Python you trust)");
        }
    }

    /// <summary>Every global the pickle names, in order.</summary>
    public static List<string> Globals(byte[] pickle, string path)
    {
        var globals = new List<string>();
        var memo = new Dictionary<long, string?>();
        // The last two values pushed, as strings where they are strings: STACK_GLOBAL takes its module and name from them.
        string? previous = null, last = null;
        void Push(string? value) => (previous, last) = (last, value);
        InvalidInputException Bad(string problem) => new(path, $"not a pickle torch.save writes: {problem}");

        int at = 0;
        int Take(int n)
        {
            if (n < 0 || at + n > pickle.Length) throw Bad($"it ends inside an opcode at byte {at}");
            int start = at;
            at += n;
            return start;
        }
        string Line()
        {
            int end = Array.IndexOf(pickle, (byte)'\n', at);
            if (end < 0) throw Bad($"a text argument at byte {at} has no end");
            string text = Encoding.UTF8.GetString(pickle, at, end - at);
            at = end + 1;
            return text;
        }
        int Length(int width)
        {
            int p = Take(width);
            long n = width switch
            {
                1 => pickle[p],
                4 => BinaryPrimitives.ReadUInt32LittleEndian(pickle.AsSpan(p)),
                _ => (long)BinaryPrimitives.ReadUInt64LittleEndian(pickle.AsSpan(p)),
            };
            if (n > pickle.Length - at) throw Bad($"an argument at byte {at} is longer than the rest of the pickle");
            return (int)n;
        }
        long Index(string text) => long.TryParse(text, out long index) ? index : throw Bad($"memo index \"{text}\" is not a number");
        string Text(int width)
        {
            int n = Length(width);
            return Encoding.UTF8.GetString(pickle, Take(n), n);
        }

        while (at < pickle.Length)
        {
            byte op = pickle[at++];
            switch (op)
            {
                case (byte)'.': return globals; // STOP
                case (byte)'c': // GLOBAL module\nname\n
                case (byte)'i': // INST module\nname\n
                {
                    string module = Line(), name = Line();
                    globals.Add($"{module}.{name}");
                    Push(null);
                    break;
                }
                case 0x93: // STACK_GLOBAL
                    if (previous is null || last is null) throw Bad("a STACK_GLOBAL whose module and name cannot be told");
                    globals.Add($"{previous}.{last}");
                    Push(null);
                    break;
                case 0x82 or 0x83 or 0x84: // EXT1, EXT2, EXT4: globals from the copyreg extension registry
                    throw new InvalidInputException(path, "refused: its pickle names objects through the extension registry, which only Python can resolve");
                // Strings (pushed values STACK_GLOBAL may use).
                case (byte)'V' or (byte)'S': Push(Line()); break;
                case (byte)'X': case (byte)'T': Push(Text(4)); break;
                case 0x8c or (byte)'U': Push(Text(1)); break;
                case 0x8d: Push(Text(8)); break;
                // Other values with arguments.
                case (byte)'I' or (byte)'L' or (byte)'F' or (byte)'P': Line(); Push(null); break;
                case (byte)'J': Take(4); Push(null); break;
                case (byte)'K': Take(1); Push(null); break;
                case (byte)'M': Take(2); Push(null); break;
                case (byte)'G': Take(8); Push(null); break;
                case (byte)'B': Take(Length(4)); Push(null); break;
                case (byte)'C': Take(Length(1)); Push(null); break;
                case 0x8e or 0x96: Take(Length(8)); Push(null); break;
                case 0x8a: Take(Length(1)); Push(null); break;
                case 0x8b: Take(Length(4)); Push(null); break;
                // Memo.
                case (byte)'p': memo[Index(Line())] = last; break;
                case (byte)'q': memo[pickle[Take(1)]] = last; break;
                case (byte)'r': memo[BinaryPrimitives.ReadUInt32LittleEndian(pickle.AsSpan(Take(4)))] = last; break;
                case 0x94: memo[memo.Count] = last; break;
                case (byte)'g': Push(memo.GetValueOrDefault(Index(Line()))); break;
                case (byte)'h': Push(memo.GetValueOrDefault(pickle[Take(1)])); break;
                case (byte)'j': Push(memo.GetValueOrDefault(BinaryPrimitives.ReadUInt32LittleEndian(pickle.AsSpan(Take(4))))); break;
                // Framing and protocol.
                case 0x80: Take(1); break;
                case 0x95: Take(8); break;
                // Opcodes without arguments: containers, calls on what is on the stack, constants.
                case (byte)'(' or (byte)'0' or (byte)'1' or (byte)'2' or (byte)'R' or (byte)'b' or (byte)'d' or (byte)'}' or (byte)'e'
                    or (byte)'a' or (byte)'l' or (byte)']' or (byte)'o' or (byte)'s' or (byte)'u' or (byte)'t' or (byte)')' or (byte)'N'
                    or (byte)'Q' or 0x81 or 0x85 or 0x86 or 0x87 or 0x88 or 0x89 or 0x8f or 0x90 or 0x91 or 0x92 or 0x97 or 0x98:
                    Push(null);
                    break;
                default:
                    throw Bad($"unknown opcode 0x{op:X2} at byte {at - 1}");
            }
        }
        throw Bad("it has no STOP opcode");
    }
}
