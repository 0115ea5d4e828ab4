using System.Diagnostics;
using System.Text.Json.Nodes;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests.Cli;

/// <summary>
/// Hostile files through the commands users run: each failure is one line on standard error naming the file and the
/// problem, exit 2 for bad input, never a stack trace unless --verbose is given, and nothing blocks or is left behind.
/// </summary>
public sealed class HostileInputCliTests : IDisposable
{
    readonly TempDir temp = new();
    public void Dispose() => temp.Dispose();

    string Teacher()
    {
        var folder = temp["teacher"];
        var (code, _, stderr) = CliProcess.Run("import", "--from", Shared.Stories260KBin, "--tokenizer", Shared.Tok512Bin, "--out", folder, "--device", "cpu");
        Assert.True(code == 0, stderr);
        return folder;
    }

    /// <summary>Exit 2 and one line "error: FILE: PROBLEM" of at most 300 characters after the prefix.</summary>
    static string AssertOneLineInputError((int Code, string Stdout, string Stderr) result, string expected)
    {
        var lines = result.Stderr.TrimEnd('\n').Split('\n');
        Assert.True(result.Code == 2, $"exit {result.Code}: {result.Stderr}");
        Assert.True(lines.Length == 1, $"{lines.Length} lines: {result.Stderr}");
        Assert.StartsWith("error: ", lines[0]);
        Assert.True(lines[0].Length <= "error: ".Length + 300, $"{lines[0].Length} characters");
        Assert.True(lines[0].Contains(expected, StringComparison.Ordinal), $"expected \"{expected}\" in: {lines[0]}");
        return lines[0];
    }

    static void SetConfigField(string folder, string field, JsonNode? value)
    {
        var path = Path.Combine(folder, "config.json");
        var config = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        config[field] = value;
        File.WriteAllText(path, config.ToJsonString());
    }

    [Fact]
    public void A_config_that_is_a_fifo_or_a_dangling_link_is_refused_at_once()
    {
        var folder = Directory.CreateDirectory(temp["model"]).FullName;
        var config = Path.Combine(folder, "config.json");
        using (var mkfifo = Process.Start("mkfifo", [config])!)
        {
            mkfifo.WaitForExit();
            Assert.Equal(0, mkfifo.ExitCode);
        }
        AssertOneLineInputError(CliProcess.Run("inspect", folder), "config.json: is a named pipe (FIFO), not a regular config.json");

        File.Delete(config);
        File.CreateSymbolicLink(config, temp["nowhere.json"]);
        AssertOneLineInputError(CliProcess.Run("generate", "--model", folder, "--device", "cpu"), $"config.json: is a symbolic link to {temp["nowhere.json"]}, which does not exist");
    }

    [Fact]
    public void Malformed_config_values_are_one_line_errors_naming_the_field_and_verbose_adds_the_trace()
    {
        var folder = Teacher();
        foreach (var (field, value, expected) in new (string, JsonNode?, string)[]
        {
            ("eos_token_id", new JsonArray(), "field 'eos_token_id' must be a token id or a non-empty list"),
            ("eos_token_id", new JsonArray((JsonNode?)null), "field 'eos_token_id' must be a token id"),
            ("eos_token_id", 512, "field 'eos_token_id' holds 512; expected token ids from 0 to 511"),
            ("layer_types", new JsonObject(), "field 'layer_types' must be an array of strings"),
            ("num_hidden_layers", 3000, "field 'num_hidden_layers' is 3000; expected 1 to 1,024"),
            ("num_hidden_layers", 4, "unexpected tensors model.layers.4."),   // too few: weights left over
            ("num_hidden_layers", 6, "tensor 'model.layers.5.input_layernorm.weight' is missing"),
            ("hidden_size", 2147483647, "field 'hidden_size' is 2147483647"),
            ("rope_theta", 0, "field 'rope_theta' is 0; expected a positive number"),
            ("rms_norm_eps", -1, "field 'rms_norm_eps' is -1"),
            ("bos_token_id", -1, "field 'bos_token_id' is -1"),
        })
        {
            var original = File.ReadAllText(Path.Combine(folder, "config.json"));
            SetConfigField(folder, field, value);
            AssertOneLineInputError(CliProcess.Run("generate", "--model", folder, "--device", "cpu", "--max-tokens", "2"), expected);
            File.WriteAllText(Path.Combine(folder, "config.json"), original);
        }

        SetConfigField(folder, "rope_theta", -5);
        var verbose = CliProcess.Run("inspect", folder, "--verbose");
        Assert.Equal(2, verbose.Code);
        Assert.Contains("error: ", verbose.Stderr);
        Assert.Contains("   at CombaDistill.", verbose.Stderr);
    }

    [Fact]
    public void A_huge_tensor_name_or_shape_gives_a_bounded_line_and_convert_leaves_nothing()
    {
        var folder = Teacher();
        var weights = Path.Combine(folder, "model.safetensors");
        var name = new string('w', 1_000_000);
        var shape = string.Join(", ", Enumerable.Repeat("1", 100_000));
        File.WriteAllBytes(weights, IO.RawSafeTensors.Build($"{{\"{name}\": {{\"dtype\": \"F32\", \"shape\": [{shape}], \"data_offsets\": [0, 4]}}}}", new byte[4]));
        var line = AssertOneLineInputError(CliProcess.Run("convert", "--from", folder, "--out", temp["student"]), "shape has 100,000 dimensions");
        Assert.Contains("model.safetensors", line);
        Assert.Equal(["teacher"], Directory.GetFileSystemEntries(temp.Path).Select(p => Path.GetFileName(p)!).ToArray());
    }

    [Fact]
    public void Weights_or_a_tokenizer_that_do_not_fit_config_json_are_refused_at_load()
    {
        var folder = Teacher();
        var original = File.ReadAllText(Path.Combine(folder, "config.json"));
        SetConfigField(folder, "vocab_size", 1024);   // the weights hold 512 rows: refused by shape before any model is built
        AssertOneLineInputError(CliProcess.Run("generate", "--model", folder, "--device", "cpu"), "tensor 'model.embed_tokens.weight' has shape [512, 64], but config.json implies [1024, 64]");
        File.WriteAllText(Path.Combine(folder, "config.json"), original);

        // a well-formed llama2.c tokenizer of 300 tokens (max_token_length, then score, length and bytes per token) beside a 512-token model
        using (var writer = new BinaryWriter(File.Create(Path.Combine(folder, "tokenizer.bin"))))
        {
            writer.Write(8);   // max_token_length
            for (var i = 0; i < 300; i++)
            {
                var piece = System.Text.Encoding.UTF8.GetBytes(i switch { 0 => "<unk>", 1 => "\n<s>\n", 2 => "\n</s>\n", < 259 => $"<0x{i - 3:X2}>", _ => $"t{i}" });
                writer.Write(0f);
                writer.Write(piece.Length);
                writer.Write(piece);
            }
        }
        AssertOneLineInputError(CliProcess.Run("generate", "--model", folder, "--device", "cpu"), "has 300 tokens, far fewer than config.json's vocab_size 512");
    }

    [Fact]
    public void A_command_line_that_does_not_parse_is_one_line_and_exit_2_not_the_help_text()
    {
        AssertOneLineInputError(CliProcess.Run("convert", "--out", temp["x"]), "Option '--from' is required (see 'combadistill convert --help')");
        // Without --out the student would go beside the teacher; a teacher that is not there is the one line.
        AssertOneLineInputError(CliProcess.Run("convert", "--from", temp["x"]), "x: no such file or folder");
        AssertOneLineInputError(CliProcess.Run("inspect", temp["x"], "--bogus"), "unknown option '--bogus' for 'inspect' (see 'combadistill inspect --help')");
    }
}
