using CombaDistill.IO;
using CombaDistill.Modeling;

namespace CombaDistill.Conversion;

/// <summary>
/// Where a teacher's files are, from what <c>--from</c> (and <c>--config</c>) name: a Hugging Face folder, a sharded
/// index (model.safetensors.index.json or pytorch_model.bin.index.json), or a bare .safetensors or pytorch_model.bin file
/// whose config.json is given or lies beside it.
/// </summary>
/// <param name="CheckpointPath">what <see cref="Checkpoint.Open"/> takes: the .safetensors file or the folder</param>
/// <param name="SideFolders">folders to take tokenizer and generation files from, most specific first</param>
public sealed record TeacherSource(string ConfigPath, string CheckpointPath, IReadOnlyList<string> SideFolders)
{
    public static TeacherSource Resolve(string from, string? configPath = null)
    {
        var full = Path.GetFullPath(from);
        if (Directory.Exists(full))
        {
            if (configPath is null) ModelFolder.Require(from);   // a llama2.c folder or a run folder is named as such
            return Make(configPath ?? Path.Combine(full, "config.json"), full, full);
        }
        if (!File.Exists(full))
            throw new InvalidInputException(from, "no such file or folder (expected a Hugging Face folder, a sharded checkpoint's index, or a .safetensors or pytorch_model.bin file)");

        var folder = Path.GetDirectoryName(full)!;
        var name = Path.GetFileName(full);
        if (name.EndsWith(".index.json", StringComparison.Ordinal))
        {
            // Checkpoint opens sharded folders by their standard index name; any other name would be read as a bare file.
            if (name is not (Checkpoint.IndexFileName or Checkpoint.PyTorchIndexFileName))
                throw new InvalidInputException(from, $"a sharded checkpoint's index must be named {Checkpoint.IndexFileName} or {Checkpoint.PyTorchIndexFileName}");
            return Make(configPath ?? Path.Combine(folder, "config.json"), name == Checkpoint.IndexFileName ? folder : full, folder);
        }
        if (!name.EndsWith(".safetensors", StringComparison.Ordinal) && !name.EndsWith(".bin", StringComparison.Ordinal))
            throw new InvalidInputException(from, "is neither a folder, a .safetensors or pytorch_model.bin file, nor a sharded checkpoint's index");
        var beside = Path.Combine(folder, "config.json");
        if (configPath is null && !File.Exists(beside))
            throw new InvalidInputException(from, ModelFolder.Llama2cHint(full) is { } hint
                ? $"is a llama2.c checkpoint; import it first, {hint}, then convert --from DIR"
                : "a bare weights file needs its config.json: pass --config, or put config.json beside it");
        return Make(configPath ?? beside, full, folder);
    }

    static TeacherSource Make(string configPath, string checkpointPath, string checkpointFolder)
    {
        var config = Path.GetFullPath(configPath);
        InputFile.RequireRegular(config, "config.json");
        var configFolder = Path.GetDirectoryName(config)!;
        return new TeacherSource(config, checkpointPath, new[] { configFolder, checkpointFolder }.Distinct().ToList());
    }

    /// <summary>
    /// The files besides the weights that a model folder carries and a student needs unchanged: tokenizers (llama2.c,
    /// SentencePiece, tiktoken, Hugging Face JSON) and generation defaults.
    /// </summary>
    public static readonly string[] SideFiles =
    [
        "tokenizer.bin", "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "added_tokens.json", "vocab.json", "merges.txt", "generation_config.json", Path.Combine("original", "tokenizer.model"),
    ];

    /// <summary>Each side file found, as (relative name, full path); the first folder that has a file wins.</summary>
    public IReadOnlyList<(string Name, string Path)> FindSideFiles() =>
        SideFiles.Select(name => (name, path: SideFolders.Select(f => Path.Combine(f, name)).FirstOrDefault(File.Exists)))
            .Where(e => e.path is not null)
            .Select(e => (e.name, e.path!))
            .ToList();

    /// <summary>Every file this source reads, so an output folder can be checked not to contain any of them.</summary>
    public IEnumerable<string> InputPaths(Checkpoint checkpoint) =>
        checkpoint.Files.Append(checkpoint.Path).Append(ConfigPath).Concat(FindSideFiles().Select(f => f.Path)).Select(Path.GetFullPath);
}
