using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests.Cli;

/// <summary>import, inspect and generate, run as the user runs them: the built CLI in its own process, stdout and stderr apart.</summary>
public class ModelCommandsTests
{

    static string Import(TempDir temp)
    {
        var folder = temp["stories"];
        var (code, stdout, stderr) = CliProcess.Run("import", "--from", Shared.Stories260KBin, "--tokenizer", Shared.Tok512Bin, "--out", folder, "--device", "cpu");
        Assert.True(code == 0, stderr);
        Assert.Equal("", stdout);
        Assert.Contains("imported", stderr);
        return folder;
    }

    [Fact]
    public void Generate_writes_exactly_the_generated_text_to_stdout()
    {
        using var temp = new TempDir();
        var folder = Import(temp);
        var (code, stdout, stderr) = CliProcess.Run("generate", "--model", folder, "--prompt", "", "--max-tokens", "200", "--temperature", "0", "--device", "cpu", "--threads", "1");
        Assert.True(code == 0, stderr);
        Assert.Equal(Modeling.Stories260KTests.GreedyReference, stdout);
        Assert.Contains("200 tokens", stderr);
        Assert.DoesNotContain("note:", stderr);

        // asked past the trained context (512 positions): it runs, and says once on stderr where it extrapolates
        var past = CliProcess.Run("generate", "--model", folder, "--prompt", "", "--max-tokens", "520", "--temperature", "0", "--device", "cpu", "--threads", "1");
        Assert.True(past.Code == 0, past.Stderr);
        Assert.Contains("--max-tokens (520) go past the model's max_position_embeddings (512)", past.Stderr);
        Assert.StartsWith(Modeling.Stories260KTests.GreedyReference, past.Stdout);

        // with a prompt, stdout is the continuation only, and a seed makes sampling repeat
        string[] sampled = ["generate", "--model", folder, "--prompt", "Once upon a time", "--max-tokens", "40", "--temperature", "0.9", "--top-p", "0.9", "--seed", "5", "--dtype", "float32"];
        var first = CliProcess.Run(sampled);
        Assert.True(first.Code == 0, first.Stderr);
        Assert.False(first.Stdout.StartsWith("Once", StringComparison.Ordinal));
        Assert.True(first.Stdout.Length > 40);
        Assert.Equal(first.Stdout, CliProcess.Run(sampled).Stdout);
    }

    [Fact]
    public void Generate_takes_the_usual_spellings_of_a_dtype_and_its_help_lists_the_canonical_names()
    {
        using var temp = new TempDir();
        var folder = Import(temp);
        string[] Greedy(string dtype) => ["generate", "--model", folder, "--max-tokens", "20", "--temperature", "0", "--device", "cpu", "--threads", "1", "--dtype", dtype];
        var canonical = CliProcess.Run(Greedy("bfloat16"));
        Assert.True(canonical.Code == 0, canonical.Stderr);
        foreach (var alias in new[] { "bf16", "BF16" })
        {
            var run = CliProcess.Run(Greedy(alias));
            Assert.True(run.Code == 0, run.Stderr);
            Assert.Equal(canonical.Stdout, run.Stdout);
        }
        var fp32 = CliProcess.Run(Greedy("fp32"));
        Assert.True(fp32.Code == 0, fp32.Stderr);
        Assert.Equal(CliProcess.Run(Greedy("float32")).Stdout, fp32.Stdout);

        // a dtype generate does not run in, and a word that is no dtype, are told apart
        var half = CliProcess.Run(Greedy("fp16"));
        Assert.Equal(2, half.Code);
        Assert.StartsWith("error: --dtype fp16 is not supported by this command; expected one of float32, bfloat16 (or fp32, f32, float, bf16)", half.Stderr);
        Assert.StartsWith("error: --dtype int8 is not a dtype; expected one of float32, bfloat16", CliProcess.Run(Greedy("int8")).Stderr);
        Assert.Contains("--dtype <float32|bfloat16>", CliProcess.Run("generate", "--help").Stdout);
    }

    [Fact]
    public void Inspect_reports_parameters_files_and_kv_cache_size()
    {
        using var temp = new TempDir();
        var folder = Import(temp);
        var (code, stdout, stderr) = CliProcess.Run("inspect", folder, "--json", "--context", "100");
        Assert.True(code == 0, stderr);
        var json = JsonNode.Parse(stdout)!.AsObject();
        Assert.Equal(260_032, (long)json["total_parameters"]!);
        Assert.Equal(512 * 64, (long)json["parameters"]!["embeddings"]!);
        Assert.Equal(5 * (64 * 64 * 2 + 32 * 64 * 2), (long)json["parameters"]!["attention"]!);
        Assert.Equal(5 * 3 * 64 * 172, (long)json["parameters"]!["mlp"]!);
        Assert.Equal(11 * 64, (long)json["parameters"]!["norms"]!);
        Assert.Equal(0, (long)json["parameters"]!["head"]!);
        Assert.Equal(260_032 * 4, (long)json["weight_bytes"]!);
        // keys and values × 5 layers × 4 KV heads × 8 dims × 100 tokens × 4 bytes
        Assert.Equal(2 * 5 * 4 * 8 * 100 * 4, (long)json["kv_cache_bytes"]!);
        Assert.Equal("model.safetensors", (string?)json["files"]![0]!["name"]);
        Assert.Contains("llama2.c tokenizer, 512 tokens", (string?)json["tokenizer"]);
        Assert.EndsWith("; BOS = 1, EOS = 2", (string?)json["tokenizer"]);

        var table = CliProcess.Run("inspect", folder);
        Assert.True(table.Code == 0, table.Stderr);
        Assert.Contains("260,032", table.Stdout);
        Assert.Contains("tied to embeddings", table.Stdout);
    }

    [Fact]
    public void Corpus_samples_the_teacher_into_a_token_file_with_its_progress_on_stderr()
    {
        using var temp = new TempDir();
        var folder = Import(temp);
        var output = temp["corpus.tokens"];
        var (code, stdout, stderr) = CliProcess.Run("corpus", "--teacher", folder, "--tokens", "1500", "--out", output, "--batch", "4",
            "--length", "100", "--seed", "3", "--device", "cpu", "--threads", "1");
        Assert.True(code == 0, stderr);
        Assert.Equal("", stdout);
        Assert.Contains("wrote 1,500 tokens", stderr);
        var tokens = CombaDistill.Distillation.TokenFile.Read(output, 512);
        Assert.Equal(1500, tokens.Length);
        Assert.Equal(1, tokens[0]);                 // every sequence starts with BOS
    }

    [Fact]
    public void Corpus_takes_counts_as_recipes_write_them_and_never_overwrites_without_force()
    {
        using var temp = new TempDir();
        var folder = Import(temp);
        var output = temp["corpus.tokens"];
        string[] Corpus(string count, params string[] extra) =>
            ["corpus", "--teacher", folder, "--tokens", count, "--out", output, "--batch", "4", "--length", "50", "--device", "cpu", "--threads", "1", .. extra];

        var made = CliProcess.Run(Corpus("1.2k"));
        Assert.True(made.Code == 0, made.Stderr);
        Assert.Contains("wrote 1,200 tokens", made.Stderr);
        var first = File.ReadAllBytes(output);

        var again = CliProcess.Run(Corpus("300", "--seed", "8"));
        Assert.Equal(2, again.Code);
        Assert.Equal($"error: {output}: exists; use --force to replace it\n", again.Stderr.Replace("\r\n", "\n"));
        Assert.Equal(first, File.ReadAllBytes(output));

        var forced = CliProcess.Run(Corpus("300", "--seed", "8", "--force"));
        Assert.True(forced.Code == 0, forced.Stderr);
        Assert.Equal(300, CombaDistill.Distillation.TokenFile.Read(output, 512).Length);

        var bad = CliProcess.Run(Corpus("2x", "--force"));
        Assert.Equal(2, bad.Code);
        Assert.Equal("error: --tokens '2x': expected a whole number such as 2000, 2_000, 2k, 1.5m or 1e6\n", bad.Stderr.Replace("\r\n", "\n"));
        Assert.Equal(300, CombaDistill.Distillation.TokenFile.Read(output, 512).Length);
    }

    [Fact]
    public void Inspect_and_convert_on_a_llama2c_checkpoint_or_a_run_folder_say_what_to_pass_instead()
    {
        using var temp = new TempDir();
        var file = CliProcess.Run("inspect", Shared.Stories260KBin);
        Assert.Equal(2, file.Code);
        Assert.Equal($"error: {Shared.Stories260KBin}: is a file; expected a model folder. Import this llama2.c checkpoint: "
            + $"`combadistill import --from {Shared.Stories260KBin} --tokenizer {Shared.Tok512Bin} --out DIR`\n", file.Stderr.Replace("\r\n", "\n"));

        var folder = Path.GetDirectoryName(Shared.Stories260KBin)!;
        foreach (var args in new[] { new[] { "inspect", folder }, ["convert", "--from", folder, "--out", temp["student"]] })
        {
            var r = CliProcess.Run(args);
            Assert.Equal(2, r.Code);
            Assert.Contains($"{folder}: no config.json, but a llama2.c checkpoint; import it: `combadistill import --from {Shared.Stories260KBin} --tokenizer {Shared.Tok512Bin} --out DIR`", r.Stderr);
            Assert.Single(r.Stderr.Trim().Split('\n'));
        }

        // under a long path the command still comes whole: the CLI bounds the quoted part of a line, not its advice
        var deep = Path.Combine(temp.Path, string.Join("/", Enumerable.Repeat("a-rather-long-folder-name", 8)));
        Directory.CreateDirectory(deep);
        var (bin, tok) = (Path.Combine(deep, "stories260K.bin"), Path.Combine(deep, "tok512.bin"));
        File.Copy(Shared.Stories260KBin, bin);
        File.Copy(Shared.Tok512Bin, tok);
        var far = CliProcess.Run("inspect", bin);
        Assert.Equal(2, far.Code);
        Assert.EndsWith($"`combadistill import --from {bin} --tokenizer {tok} --out DIR`", far.Stderr.Trim());

        // a run folder: the student is inside it
        var run = temp["run"];
        Directory.CreateDirectory(Path.Combine(run, "student"));
        var runInspect = CliProcess.Run("inspect", run);
        Assert.Equal(2, runInspect.Code);
        Assert.Contains($"pass {Path.Combine(run, "student")} (its final student) or {Path.Combine(run, "teacher")} (its teacher)", runInspect.Stderr);
        Assert.False(Directory.Exists(temp["student"]));
    }

    [Fact]
    public void Import_with_force_replaces_an_earlier_import_but_never_a_users_file_or_folder()
    {
        using var temp = new TempDir();
        string[] ImportTo(string output) => ["import", "--from", Shared.Stories260KBin, "--tokenizer", Shared.Tok512Bin, "--out", output, "--force"];

        var notes = temp["notes.txt"];
        File.WriteAllText(notes, "my notes");
        var file = CliProcess.Run(ImportTo(notes));
        Assert.Equal(2, file.Code);
        Assert.Equal($"error: {notes}: is a file, not a model folder; --force replaces only a model folder (config.json and safetensors weights) or an empty folder\n", file.Stderr.Replace("\r\n", "\n"));
        Assert.Equal("my notes", File.ReadAllText(notes));

        var mine = temp["mydir"];
        Directory.CreateDirectory(mine);
        File.WriteAllText(Path.Combine(mine, "keep.txt"), "keep");
        var folder = CliProcess.Run(ImportTo(mine));
        Assert.Equal(2, folder.Code);
        Assert.Contains($"{mine}: is not a model folder (no config.json)", folder.Stderr);
        Assert.Equal(["keep.txt"], Directory.GetFileSystemEntries(mine).Select(Path.GetFileName));

        // an earlier import, and an empty folder, are what --force is for
        var model = Import(temp);
        var again = CliProcess.Run(ImportTo(model));
        Assert.True(again.Code == 0, again.Stderr);
        var empty = temp["empty"];
        Directory.CreateDirectory(empty);
        var intoEmpty = CliProcess.Run(ImportTo(empty));
        Assert.True(intoEmpty.Code == 0, intoEmpty.Stderr);
        Assert.True(File.Exists(Path.Combine(empty, "model.safetensors")));
    }

    [Fact]
    public void User_errors_exit_2_with_one_line_on_stderr_and_nothing_on_stdout()
    {
        using var temp = new TempDir();
        Directory.CreateDirectory(temp["exists"]);
        var refused = CliProcess.Run("import", "--from", Shared.Stories260KBin, "--tokenizer", Shared.Tok512Bin, "--out", temp["exists"]);
        Assert.Equal(2, refused.Code);
        Assert.Contains("--force", refused.Stderr);
        Assert.Equal("", refused.Stdout);

        var missing = CliProcess.Run("generate", "--model", temp["nowhere"], "--max-tokens", "5", "--temperature", "0");
        Assert.Equal(2, missing.Code);
        Assert.Contains(temp["nowhere"], missing.Stderr.ReplaceLineEndings(""));
        Assert.Equal("", missing.Stdout);

        foreach (var command in new[] { "generate", "eval" })
        {
            var threads = CliProcess.Run(command, "--model", temp["nowhere"], "--threads", "0", "--device", "cpu");
            Assert.Equal(2, threads.Code);
            Assert.Contains("--threads is 0", threads.Stderr);
            Assert.Equal("", threads.Stdout);
        }
    }
}
