using System.Text.RegularExpressions;
using CombaDistill.IO;
using CombaDistill.Modeling.Comba;
using TorchSharp.Modules;

namespace CombaDistill.Distillation;

/// <summary>Resolves a stage's <see cref="TrainableSelection"/> to parameters and freezes everything else.</summary>
public static class TrainableParameters
{
    static readonly string[] TeacherProjections = ["q_proj.", "k_proj.", "v_proj.", "o_proj."];

    /// <summary>
    /// Sets requires_grad on the selected parameters of <paramref name="student"/> and clears it on all others;
    /// returns the selected ones by state_dict name, in the model's order, followed by the LoRA adapters' A and B
    /// when <paramref name="lora"/> is given (a weight that carries an adapter must not also train directly).
    /// </summary>
    public static IReadOnlyList<(string Name, Parameter Parameter)> Apply(CombaForCausalLM student, TrainableSelection selection, LoraAdapters? lora = null)
    {
        var combaLayers = Enumerable.Range(0, student.model.layers.Count).Where(i => !student.model.layers[i].IsAttention)
            .Select(i => $"model.layers.{i}.self_attn.").ToArray();
        var patterns = selection.Patterns.Select(Glob).ToArray();
        bool Selected(string name) => selection.Preset switch
        {
            "all" => true,
            "none" => false,
            "attention" => combaLayers.Any(name.StartsWith),
            "comba" => combaLayers.FirstOrDefault(name.StartsWith) is { } prefix && !TeacherProjections.Any(p => name[prefix.Length..].StartsWith(p, StringComparison.Ordinal)),
            _ => patterns.Any(p => p.IsMatch(name)),
        };

        var adapted = lora?.TargetWeights.ToHashSet() ?? [];
        var chosen = new List<(string, Parameter)>();
        foreach (var (name, parameter) in student.named_parameters())
        {
            var on = Selected(name);
            if (on && adapted.Contains(name))
                throw new InvalidInputException(null, $"trainable '{selection}' selects {name}, which also carries a LoRA adapter; train it one way (leave it out of trainable, or drop its projection from lora.targets)");
            parameter.requires_grad = on;
            if (on) chosen.Add((name, parameter));
        }
        foreach (var (name, parameter) in lora?.Parameters ?? [])
        {
            parameter.requires_grad = true;
            chosen.Add((name, parameter));
        }
        if (chosen.Count == 0)
            throw new InvalidInputException(null, $"trainable '{selection}' selects no parameter of the student (names look like model.layers.0.self_attn.q_proj.weight)");
        return chosen;
    }

    /// <summary>Decoupled weight decay belongs on matrices; biases, norm weights, gates and per-head scalars keep their values.</summary>
    public static bool Decays(string name, Parameter parameter) => parameter.dim() >= 2 && !name.EndsWith("conv.weight", StringComparison.Ordinal);

    static Regex Glob(string pattern) => new("^" + Regex.Escape(pattern).Replace(@"\*", ".*") + "$", RegexOptions.CultureInvariant);
}
