using CombaDistill.Modeling.Llama;
using CombaDistill.Ops;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CombaDistill.Modeling.Comba;

/// <summary>
/// A Comba layer in place of a teacher's self-attention. q/k/v/o keep the teacher's shapes (and biases), so they
/// load straight from its weights; k/v stay at the teacher's KV width and each KV head serves its group of query
/// heads inside the op (no duplicated weights). Per query head it adds:
/// <code>
///   g = −exp(A_log) · softplus(x W_a + dt_bias)     a_proj: hidden → heads (Mamba-2 style decay)
///   β = σ(x W_b)                                      b_proj: hidden → heads
///   λ = σ(lambda_logit),  d                           one number each
/// </code>
/// then x → q, k, v → [short causal conv] → [rotary on q, k] → [Taylor features of q, k] → Comba recurrence
/// → [normalised read-out] → [per-head RMSNorm] → o_proj.
/// Field names are the Hugging Face keys under <c>self_attn.</c>.
/// </summary>
public sealed class CombaAttention : nn.Module
{
    // Mamba-2's initialisation of the decay: A ~ U[1, 16], softplus(dt_bias) ~ log-uniform on [1e-3, 1e-1]
    const double AMin = 1, AMax = 16, DtMin = 1e-3, DtMax = 1e-1;

    public Linear q_proj, k_proj, v_proj, o_proj;
    public Linear a_proj, b_proj;
    public Parameter A_log, dt_bias, lambda_logit, d;
    public ShortConvolution? q_conv, k_conv, v_conv;
    public HeadRmsNorm? o_norm;

    readonly CombaConfig options;
    readonly int heads, kvHeads, headDim;

    public CombaConfig Options => options;

    public CombaAttention(string name, LlamaConfig model, CombaConfig comba, Device? device = null, ScalarType? dtype = null) : base(name)
    {
        options = comba.Validated();
        (heads, kvHeads, headDim) = (model.NumAttentionHeads, model.NumKeyValueHeads, model.HeadDim);
        var hidden = model.HiddenSize;
        var type = dtype ?? get_default_dtype();
        q_proj = nn.Linear(hidden, heads * headDim, hasBias: model.QkvBias, device: device, dtype: type);
        k_proj = nn.Linear(hidden, kvHeads * headDim, hasBias: model.QkvBias, device: device, dtype: type);
        v_proj = nn.Linear(hidden, kvHeads * headDim, hasBias: model.QkvBias, device: device, dtype: type);
        o_proj = nn.Linear(heads * headDim, hidden, hasBias: model.OutputBias, device: device, dtype: type);
        a_proj = nn.Linear(hidden, heads, hasBias: false, device: device, dtype: type);
        b_proj = nn.Linear(hidden, heads, hasBias: false, device: device, dtype: type);

        using (no_grad())
        {
            var a = empty([heads], dtype: type, device: device).uniform_(AMin, AMax);
            A_log = new Parameter(a.log());
            var dt = (empty([heads], dtype: type, device: device).uniform_(0, 1) * (Math.Log(DtMax) - Math.Log(DtMin)) + Math.Log(DtMin)).exp();
            dt_bias = new Parameter(dt + (-(-dt).expm1()).log());              // softplus⁻¹(dt)
            var logitLambda = Math.Log(options.InitialLambda / (1 - options.InitialLambda));
            lambda_logit = new Parameter(full([heads], logitLambda, dtype: type, device: device));
            d = new Parameter(full([heads], options.InitialD, dtype: type, device: device));
        }
        if (options.ShortConv > 0)
        {
            q_conv = new ShortConvolution("q_conv", heads * headDim, options.ShortConv, device, type);
            k_conv = new ShortConvolution("k_conv", kvHeads * headDim, options.ShortConv, device, type);
            v_conv = new ShortConvolution("v_conv", kvHeads * headDim, options.ShortConv, device, type);
        }
        if (options.OutputNorm) o_norm = new HeadRmsNorm("o_norm", headDim, options.NormEps, device, type);
        RegisterComponents();
    }

    /// <summary>Parameters beyond q/k/v/o_proj: gates, λ, d, convolutions and the output norm.</summary>
    public long ExtraParameterCount =>
        named_parameters().Where(p => !TeacherProjections.Contains(p.name.Split('.')[0])).Sum(p => p.parameter.numel());

    /// <summary>Parameters of q/k/v/o_proj, the part taken over from the teacher.</summary>
    public long ProjectionParameterCount =>
        named_parameters().Where(p => TeacherProjections.Contains(p.name.Split('.')[0])).Sum(p => p.parameter.numel());

    static readonly string[] TeacherProjections = ["q_proj", "k_proj", "v_proj", "o_proj"];

    /// <param name="x">(B, T, hidden)</param>
    /// <param name="cos">(T, head_dim) for these positions (Hugging Face rotate_half convention); needed when Rotary is "teacher", ignored otherwise</param>
    /// <param name="sin">as <paramref name="cos"/></param>
    /// <param name="state">the state after the previous tokens, or null at a sequence start</param>
    /// <returns>y (B, T, hidden) and the state after these tokens</returns>
    public (Tensor Output, CombaState State) forward(Tensor x, Tensor? cos = null, Tensor? sin = null, CombaState? state = null)
    {
        using var scope = NewDisposeScope();
        var (batch, length) = (x.shape[0], x.shape[1]);
        // Projections run through call, not forward, so forward hooks apply (that is how LoRA adapters attach).
        var q = q_proj.call(x);
        var k = k_proj.call(x);
        var v = v_proj.call(x);
        Tensor? qCache = null, kCache = null, vCache = null;
        if (q_conv is not null)
        {
            (q, qCache) = q_conv.forward(q, state?.QConv);
            (k, kCache) = k_conv!.forward(k, state?.KConv);
            (v, vCache) = v_conv!.forward(v, state?.VConv);
        }
        q = q.view(batch, length, heads, headDim).transpose(1, 2);              // (B, H, T, D)
        k = k.view(batch, length, kvHeads, headDim).transpose(1, 2);            // (B, Hkv, T, D)
        v = v.view(batch, length, kvHeads, headDim).transpose(1, 2);
        (Tensor, Tensor)? rotaryInOp = null;
        if (options.Rotary == "teacher")
        {
            if (cos is null || sin is null) throw new ArgumentException("CombaAttention: rotary is 'teacher' but no cos/sin tables were passed");
            // over a sequence the op rotates q and k itself (the bf16 kernels in registers, with no copy of q and k);
            // a decoding step, and the Taylor features that come after the rotation, take it here
            if (length > 1 && options.FeatureMap != "taylor") rotaryInOp = (cos, sin);
            else (q, k) = Rotary.Apply(q, k, (cos, sin));
        }
        if (options.FeatureMap == "taylor") (q, k) = (TaylorFeatureMap.Apply(q), TaylorFeatureMap.Apply(k));
        // The normaliser z is what a value of constant one reads out; it rides along as one more value channel.
        if (options.NormalizeReadout) v = cat([v, ones_like(v.narrow(-1, 0, 1))], -1);

        // gates in float32 (float64 for a float64 model): g is summed over whole chunks
        var compute = x.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
        var g = -A_log.to(compute).exp() * nn.functional.softplus(a_proj.call(x).to(compute) + dt_bias.to(compute));
        var beta = b_proj.call(x).to(compute).sigmoid();
        g = g.transpose(1, 2);                                                   // (B, H, T)
        beta = beta.transpose(1, 2);
        var lambda = lambda_logit.to(compute).sigmoid();
        var dCorrection = d.to(compute);

        Tensor o, recurrent;
        if (length == 1)
        {
            (o, recurrent) = RecurrentComba.Step(q.squeeze(2), k.squeeze(2), v.squeeze(2), g.squeeze(2), beta.squeeze(2), lambda, dCorrection, options.Scale, state?.Recurrent);
            o = o.unsqueeze(2);
        }
        else
        {
            // the fused CUDA kernels where they apply (4–14× faster forward+backward on an H200); the chunkwise ops otherwise
            (o, recurrent) = FusedComba.Forward(q, k, v, g, beta, lambda, dCorrection, options.Scale, state?.Recurrent, options.ChunkSize, rotary: rotaryInOp);
        }
        if (options.NormalizeReadout)
        {
            var z = o.narrow(-1, headDim, 1);
            o = o.narrow(-1, 0, headDim) / (z.abs() + options.ReadoutEps);
        }
        if (o_norm is not null) o = o_norm.forward(o);
        var y = o_proj.call(o.transpose(1, 2).reshape(batch, length, heads * headDim));
        var next = new CombaState(recurrent.MoveToOuterDisposeScope(), qCache?.MoveToOuterDisposeScope(), kCache?.MoveToOuterDisposeScope(), vCache?.MoveToOuterDisposeScope());
        return (y.MoveToOuterDisposeScope(), next);
    }
}
