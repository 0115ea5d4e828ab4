using System.Text.Json;
using System.Text.Json.Nodes;
using CombaDistill.IO;
using CombaDistill.Modeling.Comba;
using CombaDistill.Modeling.Llama;
using static TorchSharp.torch;

namespace CombaDistill.Modeling;

/// <summary>Opens any model folder the tools work on, teacher or student, by config.json's model_type.</summary>
public static class CausalLMLoader
{
    /// <summary>"comba" for a student folder, else the teacher's model type (llama, mistral, qwen2, …), as config.json says.</summary>
    public static string ModelTypeOf(string folder)
    {
        var path = Path.Combine(folder, "config.json");
        ModelFolder.Require(folder);
        return InputFile.ReadJsonObject(path, "config.json", j => j["model_type"] is JsonValue v && v.TryGetValue<string>(out var type)
            ? type
            : throw new InvalidInputException(path, "field 'model_type' is missing or not a string"));
    }

    /// <summary>
    /// A Comba student (<see cref="CombaForCausalLM"/>; a folder written by export too) or a Llama-family teacher (<see cref="LlamaForCausalLM"/>),
    /// in eval mode; without <paramref name="dtype"/> the weights keep config.json's torch_dtype.
    /// </summary>
    public static ICausalLM Load(string folder, ScalarType? dtype = null, Device? device = null) =>
        CombaStudentConfig.IsStudentType(ModelTypeOf(folder))
            ? CombaForCausalLM.FromPretrained(folder, dtype, device)
            : LlamaForCausalLM.FromPretrained(folder, dtype, device);
}
