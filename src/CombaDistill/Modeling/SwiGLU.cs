using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CombaDistill.Modeling;

/// <summary>The Llama feed-forward block: down( silu(gate x) ⊙ up x ).</summary>
public sealed class SwiGLU : nn.Module<Tensor, Tensor>
{
    public Linear gate_proj, up_proj, down_proj;

    public SwiGLU(long hiddenSize, long intermediateSize, ScalarType dtype = ScalarType.Float32, Device? device = null) : base(nameof(SwiGLU))
    {
        gate_proj = nn.Linear(hiddenSize, intermediateSize, hasBias: false, device: device, dtype: dtype);
        up_proj = nn.Linear(hiddenSize, intermediateSize, hasBias: false, device: device, dtype: dtype);
        down_proj = nn.Linear(intermediateSize, hiddenSize, hasBias: false, device: device, dtype: dtype);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        // call, not forward: forward hooks (LoRA adapters) apply
        return down_proj.call(nn.functional.silu(gate_proj.call(x)) * up_proj.call(x));
    }
}
