using CombaDistill.Conversion;
using CombaDistill.IO;
using CombaDistill.Modeling.Comba;

namespace CombaDistill.Distillation;

/// <summary>Writes a trained student as a normal student folder, the same layout the converter makes, so generate, inspect and eval open it.</summary>
public static class StudentFolder
{
    /// <summary>
    /// config.json (with torch_dtype of the weights), model.safetensors (or shards) and the tokenizer files copied from
    /// <paramref name="tokenizerFolder"/>; the folder appears all at once.
    /// </summary>
    public static void Save(CombaForCausalLM student, string folder, string tokenizerFolder, bool force = false, long maxShardBytes = 5_000_000_000)
    {
        using var output = AtomicDirectory.Create(folder, force);
        var state = student.state_dict();
        var dtype = state.Values.First().dtype;
        CheckpointWriter.Write(output.Path, state.Select(kv => (kv.Key, kv.Value)), maxShardBytes, new Dictionary<string, string> { ["format"] = "pt" });
        var config = student.StudentConfig with { Architecture = student.StudentConfig.Architecture with { TorchDtype = CombaConverter.DTypeName(dtype) } };
        AtomicFile.WriteAllText(Path.Combine(output.Path, "config.json"), config.ToJson().ToJsonString(new() { WriteIndented = true }) + "\n");
        foreach (var name in Conversion.TeacherSource.SideFiles)
        {
            var source = Path.Combine(tokenizerFolder, name);
            if (!File.Exists(source)) continue;
            var target = Path.Combine(output.Path, name);
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            IoRetry.Execute(() => File.Copy(source, target));
        }
        output.Commit();
    }

    /// <summary>True when <paramref name="folder"/> holds a complete model folder (config.json and weights).</summary>
    public static bool IsComplete(string folder) =>
        File.Exists(Path.Combine(folder, "config.json"))
        && (File.Exists(Path.Combine(folder, Checkpoint.SingleFileName)) || File.Exists(Path.Combine(folder, Checkpoint.IndexFileName)));
}
