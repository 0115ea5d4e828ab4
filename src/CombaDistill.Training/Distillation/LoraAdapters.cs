using CombaDistill.IO;
using CombaDistill.Modeling.Comba;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CombaDistill.Distillation;

/// <summary>
/// LoRA adapters on a student's projections for one stage (<see cref="LoraRecipe"/>). Each target
/// <c>nn.Linear</c> keeps its weight W frozen and gains, through a forward hook,
/// <code>
///   y = W x + b + (alpha / rank) · B A dropout(x)        A: rank × in, uniform ±1/√in;  B: out × rank, zeros
/// </code>
/// so at attachment the student computes exactly what it did before. A and B are named
/// <c>…q_proj.lora_A.weight</c> / <c>…q_proj.lora_B.weight</c> (PEFT's names) so that checkpoints save and
/// restore them like any trainable parameter. <see cref="Merge"/> folds the update into W and detaches the hooks;
/// <see cref="Dispose"/> detaches them without merging. Dropout is active only while the student is in training mode.
/// </summary>
public sealed class LoraAdapters : IDisposable
{
    sealed record Adapter(string Module, Linear Linear, Parameter A, Parameter B, Linear.HookRemover Hook);

    readonly List<Adapter> adapters = [];
    readonly LoraRecipe recipe;
    bool detached;

    LoraAdapters(LoraRecipe recipe) => this.recipe = recipe;

    /// <summary>The adapters' A and B by name, in the student's module order: what the stage trains besides <c>trainable</c>.</summary>
    public IReadOnlyList<(string Name, Parameter Parameter)> Parameters =>
        adapters.SelectMany(a => new[] { ($"{a.Module}.lora_A.weight", a.A), ($"{a.Module}.lora_B.weight", a.B) }).ToList();

    /// <summary>The weights that carry an adapter (<c>….q_proj.weight</c>): frozen while it trains.</summary>
    public IReadOnlyList<string> TargetWeights => adapters.Select(a => $"{a.Module}.weight").ToList();

    /// <summary>
    /// Attaches an adapter to every projection of <paramref name="student"/>'s layers whose name is one of the recipe's
    /// targets. A is drawn from a generator seeded by <paramref name="seed"/>, so the same seed gives the same adapters
    /// whatever else has used torch's global generator.
    /// </summary>
    public static LoraAdapters Attach(CombaForCausalLM student, LoraRecipe recipe, long seed)
    {
        var lora = new LoraAdapters(recipe);
        using var generator = new Generator((ulong)seed);
        foreach (var (name, module) in student.named_modules())
        {
            if (module is not Linear linear || !name.StartsWith("model.layers.", StringComparison.Ordinal)) continue;
            if (!recipe.Targets.Contains(name[(name.LastIndexOf('.') + 1)..])) continue;
            var weight = linear.weight!;
            var (outputs, inputs) = (weight.shape[0], weight.shape[1]);
            Parameter a, b;
            using (no_grad())
            {
                var bound = 1.0 / Math.Sqrt(inputs);
                // drawn on the CPU (the generator is a CPU one) and moved, so a run gets the same adapters on any device
                a = new Parameter(empty([recipe.Rank, inputs], ScalarType.Float32).uniform_(-bound, bound, generator).to(weight.device));
                b = new Parameter(zeros([outputs, recipe.Rank], ScalarType.Float32, weight.device));
            }
            var hook = linear.register_forward_hook((m, x, y) => y + lora.Update(x, a, b, m.training).to(y.dtype));
            lora.adapters.Add(new Adapter(name, linear, a, b, hook));
        }
        if (lora.adapters.Count == 0)
            throw new InvalidInputException(null, $"lora targets {string.Join(", ", recipe.Targets)} match no projection of the student");
        return lora;
    }

    /// <summary>(alpha / rank) · B A dropout(x), in float32.</summary>
    Tensor Update(Tensor x, Tensor a, Tensor b, bool training)
    {
        var input = x.to(ScalarType.Float32);
        if (recipe.Dropout > 0) input = nn.functional.dropout(input, recipe.Dropout, training);
        return nn.functional.linear(nn.functional.linear(input, a), b) * recipe.Scale;
    }

    /// <summary>W ← W + (alpha / rank) · B A for every adapter, then detaches them: the student now computes the same without hooks.</summary>
    public void Merge()
    {
        if (detached) throw new InvalidOperationException("the LoRA adapters are already merged or detached");
        using (no_grad())
        {
            foreach (var adapter in adapters)
            {
                var weight = adapter.Linear.weight!;
                using var delta = adapter.B.matmul(adapter.A).mul_(recipe.Scale);
                weight.add_(delta.to(weight.dtype));
            }
        }
        Dispose();
    }

    /// <summary>Removes the hooks without merging (the student is back to its weights without the adapters).</summary>
    public void Dispose()
    {
        if (detached) return;
        detached = true;
        foreach (var adapter in adapters) adapter.Hook.remove();
    }
}
