using CombaDistill.Conversion;
using CombaDistill.Modeling;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests.Modeling;

/// <summary>What a path that is not a model folder is called, and the command a new user needs next.</summary>
public class ModelFolderTests
{
    static string Message(Action action) => Assert.Throws<InvalidInputException>(action).Message;

    /// <summary>A folder laid out like ../shared/models/stories260K: the llama2.c checkpoint and its tokenizer, no config.json.</summary>
    static string Llama2cFolder(TempDir temp)
    {
        var folder = temp["stories"];
        Directory.CreateDirectory(folder);
        File.Copy(Shared.Stories260KBin, Path.Combine(folder, "stories260K.bin"));
        File.Copy(Shared.Tok512Bin, Path.Combine(folder, "tok512.bin"));
        return folder;
    }

    [Fact]
    public void A_llama2c_checkpoint_is_recognised_by_its_header_and_length_and_nothing_else_is()
    {
        using var temp = new TempDir();
        Assert.True(ModelFolder.LooksLikeLlama2cCheckpoint(Shared.Stories260KBin));
        Assert.False(ModelFolder.LooksLikeLlama2cCheckpoint(Shared.Tok512Bin));
        var cut = temp["cut.bin"];
        File.WriteAllBytes(cut, File.ReadAllBytes(Shared.Stories260KBin)[..^4]);   // a length the header does not imply
        Assert.False(ModelFolder.LooksLikeLlama2cCheckpoint(cut));
        var renamed = temp["stories260K.pt"];
        File.Copy(Shared.Stories260KBin, renamed);                                    // llama2.c names its checkpoints .bin
        Assert.False(ModelFolder.LooksLikeLlama2cCheckpoint(renamed));
        File.WriteAllText(temp["notes.bin"], "not a model at all, but 28 bytes long or more");
        Assert.False(ModelFolder.LooksLikeLlama2cCheckpoint(temp["notes.bin"]));
    }

    [Fact]
    public void A_file_is_called_a_file_and_a_llama2c_checkpoint_gets_the_import_command()
    {
        using var temp = new TempDir();
        var folder = Llama2cFolder(temp);
        var bin = Path.Combine(folder, "stories260K.bin");
        Assert.Equal($"{bin}: is a file; expected a model folder. Import this llama2.c checkpoint: "
            + $"`combadistill import --from {bin} --tokenizer {Path.Combine(folder, "tok512.bin")} --out DIR`", Message(() => ModelFolder.Require(bin)));

        File.Delete(Path.Combine(folder, "tok512.bin"));   // no tokenizer beside it: a placeholder the user fills in
        Assert.EndsWith("--tokenizer TOKENIZER.bin --out DIR`", Message(() => ModelFolder.Require(bin)));

        var notes = temp["notes.txt"];
        File.WriteAllText(notes, "notes");
        Assert.Equal($"{notes}: is a file; expected a model folder (config.json and weights)", Message(() => ModelFolder.Require(notes)));
        Assert.Equal($"{temp["nowhere"]}: model folder does not exist", Message(() => ModelFolder.Require(temp["nowhere"])));
    }

    [Fact]
    public void A_folder_without_config_json_is_named_for_what_it_holds()
    {
        using var temp = new TempDir();
        var folder = Llama2cFolder(temp);
        Assert.Equal($"{folder}: no config.json, but a llama2.c checkpoint; import it: `combadistill import --from {Path.Combine(folder, "stories260K.bin")} "
            + $"--tokenizer {Path.Combine(folder, "tok512.bin")} --out DIR`", Message(() => ModelFolder.Require(folder)));

        var run = temp["run"];
        Directory.CreateDirectory(Path.Combine(run, "student"));
        File.WriteAllText(Path.Combine(run, "recipe.yaml"), "seed: 1\n");
        Assert.Equal($"{run}: no config.json; it looks like a distill run folder: pass {Path.Combine(run, "student")} (its final student) or {Path.Combine(run, "teacher")} (its teacher)", Message(() => ModelFolder.Require(run)));

        // a folder of neither keeps the plain message
        var empty = temp["empty"];
        Directory.CreateDirectory(empty);
        Assert.Equal($"{Path.Combine(empty, "config.json")}: config.json not found", Message(() => ModelFolder.Require(empty)));
    }

    [Fact]
    public void Convert_names_a_llama2c_checkpoint_given_as_the_teacher()
    {
        using var temp = new TempDir();
        var folder = Llama2cFolder(temp);
        Assert.Contains("no config.json, but a llama2.c checkpoint; import it: `combadistill import", Message(() => TeacherSource.Resolve(folder)));
        var bin = Path.Combine(folder, "stories260K.bin");
        Assert.Equal($"{bin}: is a llama2.c checkpoint; import it first, `combadistill import --from {bin} --tokenizer {Path.Combine(folder, "tok512.bin")} --out DIR`, then convert --from DIR",
            Message(() => TeacherSource.Resolve(bin)));
        // a bare PyTorch or other .bin keeps its own advice
        File.WriteAllText(temp["pytorch_model.bin"], "PK not really a zip");
        Assert.Contains("a bare weights file needs its config.json", Message(() => TeacherSource.Resolve(temp["pytorch_model.bin"])));
    }
}
