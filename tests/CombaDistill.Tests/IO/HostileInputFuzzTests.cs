using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using CombaDistill.Conversion;
using CombaDistill.Tests.Conversion;
using CombaDistill.Distillation;
using CombaDistill.IO;
using CombaDistill.Modeling;
using CombaDistill.Modeling.Llama;
using CombaDistill.Tests.Distillation;
using CombaDistill.Tests.Support;
using CsCheck;
using static TorchSharp.torch;

namespace CombaDistill.Tests.IO;

/// <summary>
/// Property-based fuzzing of every reader of user files: safetensors headers and data, the sharded index, config.json
/// (alone, and with real weights through the model loader), .tokens files and recipes. Each input must either load
/// or be refused with <see cref="InvalidInputException"/>; what loads must also pass an independent check of its
/// own (<see cref="Fuzzing"/>). Inputs are built from a valid file by replacing its parts with hostile values
/// (huge, negative, fractional, wrongly typed, lone-surrogate escapes, bytes that are not UTF-8, long names), then
/// optionally flipping bytes or cutting the file short.
/// </summary>
public sealed class HostileInputFuzzTests : IDisposable
{
    readonly TempDir dir = new();
    public void Dispose() => dir.Dispose();

    static byte[] U(string s) => Encoding.UTF8.GetBytes(s);

    /// <summary>JSON values that break readers: sizes at and past every integer limit, wrong types, bad strings.</summary>
    static readonly byte[][] HostileValues =
    [
        .. new[]
        {
            "0", "-1", "1.5", "1e308", "-1e308", "2147483647", "2147483648", "-2147483649", "9223372036854775807", "9223372036854775808",
            "18446744073709551615", "4611686018427387904", "\"x\"", "\"\"", "\"\\ud800\"", "\"\\udc00x\"", "[]", "[null]", "[1.5]", "[\"x\"]", "{}", "null",
            "true", "[-1]", "[0]", "[0, 4611686018427387904, 4611686018427387904]", "[9223372036854775807, 2]", "[4294967296, 4294967296]",
            "[" + string.Join(",", Enumerable.Repeat("1", 100)) + "]", "[" + string.Join(",", Enumerable.Repeat("2", 70)) + "]",
            "[" + string.Join(",", Enumerable.Repeat("0", 20_000)) + "]", new string('[', 5000) + new string(']', 5000),
            "\"" + new string('n', 200_000) + "\"", "[0, 0]", "[0, 24]", "[24, 0]", "[1, 2, 3]", "\"F32\"", "\"F8_E4M3\"", "\"U16\"",
        }.Select(U),
        [(byte)'"', 0xFF, 0xFE, (byte)'"'],                  // bytes that are no UTF-8
        [(byte)'"', 0xED, 0xA0, 0x80, (byte)'"'],            // a surrogate encoded as UTF-8 (invalid)
        [(byte)'"', 0xC0, 0xAF, (byte)'"'],                  // an overlong encoding
    ];

    static readonly Gen<byte[]> Hostile = Gen.Int[0, HostileValues.Length - 1].Select(i => HostileValues[i]);

    /// <summary>One part of a JSON text: its valid value most of the time, a hostile one otherwise.</summary>
    static Gen<byte[]> Part(string valid) => Gen.Frequency((3, Gen.Const(U(valid))), (1, Hostile));

    /// <summary>Byte flips and a cut, applied after the structured edits.</summary>
    static readonly Gen<(int Position, byte Value)[]> Flips = Gen.Select(Gen.Int[0, int.MaxValue], Gen.Byte).Array[0, 4];
    static readonly Gen<double?> Cut = Gen.Frequency((5, Gen.Const((double?)null)), (1, Gen.Double[0, 1].Select(d => (double?)d)));

    static byte[] Damage(byte[] bytes, (int Position, byte Value)[] flips, double? cut)
    {
        var result = (byte[])bytes.Clone();
        if (result.Length > 0)
            foreach (var (position, value) in flips) result[position % result.Length] = value;
        return cut is { } c ? result[..(int)(result.Length * c)] : result;
    }

    static byte[] Concat(params byte[][] parts) => parts.SelectMany(p => p).ToArray();

    // ---- safetensors ------------------------------------------------------------------------------------------------

    /// <summary>Tensors of the base file: a float matrix, a bfloat16 vector, a zero-size int64 tensor and bytes.</summary>
    static readonly (string Name, string DType, long[] Shape)[] BaseTensors =
        [("a", "F32", [2, 3]), ("b", "BF16", [4]), ("c", "I64", [0, 5]), ("d", "U8", [3])];

    static readonly Gen<byte[]> SafeTensorsFiles =
        Gen.Select(
            BaseTensors.Select(t => Gen.Select(Part($"\"{t.Name}\""), Part($"\"{t.DType}\""), Part($"[{string.Join(", ", t.Shape)}]"), Gen.Frequency((4, Gen.Const(true)), (1, Gen.Const(false))))).ToArray()
                .Aggregate(Gen.Const(new List<(byte[], byte[], byte[], bool)>()), (acc, g) => Gen.Select(acc, g, (list, x) => new List<(byte[], byte[], byte[], bool)>(list) { x })),
            Gen.Frequency((4, Gen.Const(U("{\"format\": \"pt\"}"))), (1, Hostile)),
            Gen.Frequency((6, Gen.Const((byte[]?)null)), (1, Hostile.Select(h => (byte[]?)h))),
            Gen.Frequency((5, Gen.Const(0)), (1, Gen.Int[-64, 64])),
            Flips, Cut)
        .Select((tensors, metadata, wholeHeader, lengthSkew, flips, cut) =>
        {
            // data offsets follow the base shapes, so entries whose parts were not replaced stay valid
            var header = new List<byte[]> { U("{\"__metadata__\": "), metadata };
            long offset = 0;
            for (var i = 0; i < BaseTensors.Length; i++)
            {
                var (name, dtype, shape, keepOffsets) = tensors[i];
                var size = BaseTensors[i].Shape.Aggregate(1L, (a, b) => a * b) * SafeTensorsDType.ItemSize(BaseTensors[i].DType);
                var offsets = keepOffsets ? U($"[{offset}, {offset + size}]") : HostileValues[(int)(size % HostileValues.Length)];
                header.Add(Concat(U(", "), name, U(": {\"dtype\": "), dtype, U(", \"shape\": "), shape, U(", \"data_offsets\": "), offsets, U("}")));
                offset += size;
            }
            header.Add(U("}"));
            var json = wholeHeader ?? Concat([.. header]);
            var prefix = new byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)(json.Length + lengthSkew));
            var data = new byte[offset];
            new Random((int)offset).NextBytes(data);
            return Damage(Concat(prefix, json, data), flips, cut);
        });

    /// <summary>What a safetensors file that opened must satisfy, checked from the raw bytes, not from the reader's fields.</summary>
    static string? CheckOpened(SafeTensorsFile file, byte[] bytes)
    {
        var dataOffset = 8 + (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        foreach (var (name, info) in file.Tensors)
        {
            if (info.Begin < dataOffset || info.End > bytes.Length) return $"'{Bounded.Text(name, 40)}' lies outside the data region";
            var elements = info.Shape.Aggregate(System.Numerics.BigInteger.One, (a, b) => a * b);
            if (elements * SafeTensorsDType.ItemSize(info.DType) != info.ByteSize) return $"'{Bounded.Text(name, 40)}': {info.ByteSize} bytes for {info.ShapeText}";
            if (info.ByteSize > 1 << 20) continue;
            using var tensor = file.Read(name);
            if (!tensor.shape.SequenceEqual(info.Shape)) return $"'{Bounded.Text(name, 40)}' read as [{string.Join(", ", tensor.shape)}]";
            var expected = bytes.AsSpan((int)info.Begin, (int)info.ByteSize).ToArray();
            if (!RawSafeTensors.BytesOf(tensor).SequenceEqual(expected)) return $"'{Bounded.Text(name, 40)}' read other bytes than the file holds";
        }
        return null;
    }

    [Fact]
    public void Every_safetensors_file_either_opens_correctly_or_is_refused_as_input()
    {
        var tally = new Fuzzing("safetensors reader");
        var path = dir["model.safetensors"];
        SafeTensorsFiles.Sample(bytes =>
        {
            File.WriteAllBytes(path, bytes);
            tally.Case(Encoding.UTF8.GetString(bytes[..Math.Min(bytes.Length, 400)]), () =>
            {
                using var file = SafeTensorsFile.Open(path);
                return CheckOpened(file, bytes);
            });
        }, iter: Fuzzing.Cases(3000), threads: 1);
        tally.AssertClean();
    }

    /// <summary>Headers from scratch: any names, dtypes, shapes and offsets over a data region of any length.</summary>
    [Fact]
    public void Safetensors_headers_built_from_scratch_either_open_correctly_or_are_refused()
    {
        var dims = Gen.Frequency((6, Gen.Long[0, 6]), (1, Gen.OneOfConst(0L, 1L << 31, 1L << 32, 1L << 62, long.MaxValue)));
        var entry = Gen.Select(
            Gen.Frequency((4, Gen.String[Gen.Char.AlphaNumeric, 1, 8]), (1, Gen.String)),
            Gen.OneOfConst("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E5M2", "U32", "f32", ""),
            dims.Array[0, 5],
            Gen.Select(Gen.Long[0, 200], Gen.Long[0, 200]),
            Gen.Bool);
        var tally = new Fuzzing("safetensors headers from scratch");
        var path = dir["scratch.safetensors"];
        Gen.Select(entry.Array[0, 5], Gen.Int[0, 400]).Sample((entries, dataLength) =>
        {
            // entries laid end to end when 'consistent', so that valid files come up as often as broken ones
            var header = new JsonObject();
            long at = 0;
            foreach (var (name, dtype, shape, (b, e), consistent) in entries)
            {
                long begin = b, end = e;
                if (consistent && SafeTensorsDType.IsSupported(dtype))
                {
                    try { (begin, end) = (at, at + checked(shape.Aggregate(1L, (x, y) => checked(x * y)) * SafeTensorsDType.ItemSize(dtype))); }
                    catch (OverflowException) { }
                    at = end;
                }
                header[name] = new JsonObject { ["dtype"] = dtype, ["shape"] = new JsonArray(shape.Select(d => (JsonNode)d).ToArray()), ["data_offsets"] = new JsonArray(begin, end) };
            }
            var bytes = RawSafeTensors.Build(header.ToJsonString(), new byte[Math.Min(Math.Max(at, 0), 4096) + dataLength % 3]);
            File.WriteAllBytes(path, bytes);
            tally.Case(header.ToJsonString(), () =>
            {
                using var file = SafeTensorsFile.Open(path);
                return CheckOpened(file, bytes);
            });
        }, iter: Fuzzing.Cases(2000), threads: 1);
        tally.AssertClean();
    }

    [Fact]
    public void Every_sharded_index_either_opens_inside_its_folder_or_is_refused()
    {
        var folder = Directory.CreateDirectory(dir["sharded"]).FullName;
        var outside = Directory.CreateDirectory(dir["outside"]).FullName;
        using (var a = tensor(new float[] { 1, 2 }))
        using (var b = tensor(new float[] { 3 }))
        {
            SafeTensorsWriter.Write(Path.Combine(folder, "s1.safetensors"), [KeyValuePair.Create("x", a)]);
            SafeTensorsWriter.Write(Path.Combine(folder, "s2.safetensors"), [KeyValuePair.Create("y", b)]);
            SafeTensorsWriter.Write(Path.Combine(outside, "evil.safetensors"), [KeyValuePair.Create("x", a)]);
        }
        var shard = Gen.Frequency((4, Gen.OneOfConst("s1.safetensors", "s2.safetensors")),
            (1, Gen.OneOfConst("../outside/evil.safetensors", "/etc/passwd", "", ".", "..", "missing.safetensors", "s1.safetensors/", "s1.safetensors\0x")));
        var index = Gen.Select(Part("\"x\""), shard, Part("\"y\""), shard, Part("{\"total_size\": 12}"), Gen.Frequency((5, Gen.Const(true)), (1, Gen.Const(false))), Flips, Cut)
            .Select((x, sx, y, sy, metadata, keepMap, flips, cut) => Damage(Concat(
                U("{\"metadata\": "), metadata, U(", \"weight_map\": "),
                keepMap ? Concat(U("{"), x, U(": "), U(new JsonArray(sx).ToJsonString()[1..^1]), U(", "), y, U(": "), U(new JsonArray(sy).ToJsonString()[1..^1]), U("}")) : HostileValues[(sx.Length + sy.Length) % HostileValues.Length],
                U("}")), flips, cut));
        var tally = new Fuzzing("safetensors index");
        var indexPath = Path.Combine(folder, Checkpoint.IndexFileName);
        index.Sample(bytes =>
        {
            File.WriteAllBytes(indexPath, bytes);
            tally.Case(Encoding.UTF8.GetString(bytes), () =>
            {
                using var checkpoint = Checkpoint.Open(folder);
                var stray = checkpoint.Files.FirstOrDefault(f => Path.GetDirectoryName(Path.GetFullPath(f)) != folder);
                return stray is null ? null : $"read {stray}, outside the folder";
            });
        }, iter: Fuzzing.Cases(1000), threads: 1);
        tally.AssertClean();
    }

    // ---- config.json -----------------------------------------------------------------------------------------------

    /// <summary>A Llama 3-style config (GQA, llama3 rope scaling, a list of EOS ids); every field in play.</summary>
    static readonly (string Field, string Value)[] BaseConfig =
    [
        ("model_type", "\"llama\""), ("vocab_size", "128"), ("hidden_size", "32"), ("intermediate_size", "64"), ("num_hidden_layers", "2"),
        ("num_attention_heads", "4"), ("num_key_value_heads", "2"), ("head_dim", "8"), ("max_position_embeddings", "256"),
        ("rms_norm_eps", "1e-05"), ("rope_theta", "500000.0"), ("hidden_act", "\"silu\""), ("tie_word_embeddings", "true"),
        ("torch_dtype", "\"bfloat16\""), ("bos_token_id", "1"), ("eos_token_id", "[2, 3]"), ("attention_bias", "false"),
        ("layer_types", "[\"full_attention\", \"full_attention\"]"),
        ("rope_scaling", "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 64}"),
    ];

    /// <summary>config.json texts: each field kept <paramref name="keep"/> times in <paramref name="keep"/> + 2, else made hostile or dropped.</summary>
    static Gen<byte[]> Configs((string Field, string Value)[] fields, int keep = 12) =>
        Gen.Select(fields.Select(f => Gen.Frequency((keep, Gen.Const(U(f.Value))), (1, Hostile), (1, Gen.Const<byte[]>([])))).ToArray()
                .Aggregate(Gen.Const(new List<byte[]>()), (acc, g) => Gen.Select(acc, g, (list, x) => new List<byte[]>(list) { x })),
            Gen.Frequency((8, Gen.Const(new (int, byte)[0])), (1, Flips)), Cut)
        .Select((values, flips, cut) => Damage(Concat(
            U("{"),
            Concat(fields.Select((f, i) => values[i].Length == 0 ? [] : Concat(U($"\"{f.Field}\": "), values[i], U(", "))).ToArray()),
            U("\"architectures\": [\"LlamaForCausalLM\"]}")), flips, cut));

    /// <summary>What an accepted config must satisfy for a model to be built and run from it.</summary>
    static string? CheckConfig(LlamaConfig c)
    {
        if (new long[] { c.VocabSize, c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim, c.MaxPositionEmbeddings }.Any(v => v <= 0))
            return "a size is not positive";
        if ((long)c.VocabSize * c.HiddenSize > 1L << 40 || (long)c.NumHiddenLayers * c.HiddenSize * c.IntermediateSize > 1L << 44) return "sizes no machine holds";
        if (c.NumAttentionHeads % c.NumKeyValueHeads != 0 || c.HeadDim % 2 != 0) return "heads that do not group, or an odd head_dim";
        if (!(c.RmsNormEps > 0) || !(c.RopeTheta > 0) || double.IsInfinity(c.RopeTheta)) return $"eps {c.RmsNormEps} or rope_theta {c.RopeTheta}";
        if (c.RopeScaling is { } r && (!(r.Factor > 0) || double.IsInfinity(r.Factor) || (r.Type == "llama3" && !(r.HighFreqFactor > r.LowFreqFactor && r.LowFreqFactor > 0))))
            return "rope scaling that divides by zero or flips frequencies";
        if (c.BosTokenId < 0 || c.BosTokenId >= c.VocabSize || c.EosTokenIds.Length == 0 || c.EosTokenIds.Any(e => e < 0 || e >= c.VocabSize))
            return "a special token outside the vocabulary";
        return null;
    }

    [Fact]
    public void Every_config_json_either_loads_a_usable_architecture_or_is_refused()
    {
        var tally = new Fuzzing("config.json");
        var path = dir["config.json"];
        Configs(BaseConfig).Sample(bytes =>
        {
            File.WriteAllBytes(path, bytes);
            tally.Case(Encoding.UTF8.GetString(bytes), () => CheckConfig(LlamaConfig.Load(path)));
        }, iter: Fuzzing.Cases(3000), threads: 1);
        tally.AssertClean();
    }

    /// <summary>
    /// config.json of the real stories260K teacher, mutated, loaded with its real weights through the loader every
    /// command uses: the model either loads and gives finite logits, or the error names the input. Nothing huge is
    /// allocated first: the weights are compared with the config before the model is built.
    /// </summary>
    [Fact]
    public void A_mutated_config_beside_real_weights_loads_a_working_model_or_is_refused()
    {
        var folder = TeacherFolders.ImportStories260K(dir["teacher"]);
        var configPath = Path.Combine(folder, "config.json");
        var fields = JsonNode.Parse(File.ReadAllText(configPath))!.AsObject().Where(p => p.Key != "architectures").Select(p => (p.Key, p.Value?.ToJsonString() ?? "null")).ToArray();
        var tally = new Fuzzing("config.json with real weights (model loader)");
        using var ids = tensor(new long[] { 1, 40, 300, 7 }).unsqueeze(0);
        Configs(fields, keep: 30).Sample(bytes =>
        {
            File.WriteAllBytes(configPath, bytes);
            tally.Case(Encoding.UTF8.GetString(bytes), () =>
            {
                var model = CausalLMLoader.Load(folder);
                using var module = (IDisposable)model;
                using var logits = model.Forward(ids);
                return logits.isfinite().all().item<bool>() ? null : "non-finite logits";
            });
        }, iter: Fuzzing.Cases(250), threads: 1);
        tally.AssertClean();
    }

    // ---- .tokens ---------------------------------------------------------------------------------------------------

    [Fact]
    public void Every_tokens_file_either_reads_ids_inside_the_vocabulary_or_is_refused()
    {
        var valid = dir["valid.tokens"];
        TokenFile.Write(valid, Enumerable.Range(0, 50).Select(i => i * 7 % 300).ToArray(), vocabSize: 300);
        var baseBytes = File.ReadAllBytes(valid);
        var field = Gen.Frequency((3, Gen.Const((ulong?)null)),
            (1, Gen.OneOfConst<ulong?>(0, 1, 2, 3, 4, 50, 51, 49, 1UL << 31, 1UL << 32, 1UL << 62, (1UL << 63) + 25, ulong.MaxValue, ulong.MaxValue / 2 + 26)));
        var tally = new Fuzzing(".tokens reader");
        var path = dir["data.tokens"];
        Gen.Select(field, field, field, field, Gen.Int[-8, 8], Gen.Frequency((6, Gen.Const(new (int, byte)[0])), (1, Flips)), Cut, Gen.Int[1, 600])
            .Sample((version, width, count, vocab, extra, flips, cut, modelVocab) =>
            {
                var bytes = (byte[])baseBytes.Clone();
                if (version is { } v) BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(8), (uint)v);
                if (width is { } w) BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(12), (uint)w);
                if (count is { } n) BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(16), n);
                if (vocab is { } s) BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(24), (uint)s);
                bytes = extra >= 0 ? [.. bytes, .. new byte[extra]] : bytes[..(bytes.Length + extra)];
                bytes = Damage(bytes, flips, cut);
                File.WriteAllBytes(path, bytes);
                tally.Case($"{Convert.ToHexString(bytes[..Math.Min(32, bytes.Length)])} ({bytes.Length} bytes, model vocab {modelVocab})", () =>
                {
                    var ids = TokenFile.Read(path, modelVocab);
                    var promised = BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(16));
                    if ((ulong)ids.Length != promised) return $"{ids.Length} ids where the header promises {promised}";
                    return ids.All(id => id >= 0 && id < modelVocab) ? null : "an id outside the model's vocabulary";
                });
            }, iter: Fuzzing.Cases(3000), threads: 1);
        tally.AssertClean();
    }

    // ---- recipes ---------------------------------------------------------------------------------------------------

    [Fact]
    public void Every_recipe_either_loads_or_is_refused_naming_the_file()
    {
        var lines = DistillationRunTests.RecipeText().Split('\n');
        var hostileYaml = new[]
        {
            "-1", "0", "1e400", ".nan", ".inf", "-.inf", "[", "{", "~", "''", "!!binary AAAA", "&a x", "*a", "1e20", "9223372036854775808",
            "[1, [2, [3]]]", "{a: 1}", "\"\\ud800\"", "\t", "x: y: z", "? complex", "|\n  block", "0x7FFFFFFF", "2147483648", "-2147483649", "3.5",
            "/dev/zero", "../../../../etc/passwd", "\"\\0\"", new string('9', 400),
        };
        var edit = Gen.Select(Gen.Int[0, lines.Length - 1], Gen.Int[0, 3], Gen.Int[0, hostileYaml.Length - 1]);
        var tally = new Fuzzing("recipe loading");
        var path = dir["recipe.yaml"];
        Gen.Select(edit.Array[1, 4], Gen.Frequency((8, Gen.Const(new (int, byte)[0])), (1, Flips))).Sample((edits, flips) =>
        {
            var text = lines.ToList();
            foreach (var (line, kind, value) in edits)
            {
                var at = line % text.Count;
                var colon = text[at].IndexOf(':');
                switch (kind)
                {
                    case 0 when colon >= 0: text[at] = text[at][..(colon + 1)] + " " + hostileYaml[value]; break;   // a field's value
                    case 1: text.RemoveAt(at); if (text.Count == 0) text.Add(""); break;                           // a line dropped
                    case 2: text.Insert(at, text[at]); break;                                                       // a line repeated
                    default: text[at] = hostileYaml[value] + text[at]; break;                                      // the structure broken
                }
            }
            var bytes = Damage(U(string.Join('\n', text)), flips, null);
            File.WriteAllBytes(path, bytes);
            tally.Case(string.Join('\n', text), () => RecipeLoader.Load(path).Stages.Count > 0 ? null : "a recipe without stages");
        }, iter: Fuzzing.Cases(1500), threads: 1);
        tally.AssertClean();
    }
}
