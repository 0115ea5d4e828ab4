using CombaDistill.Modeling.Comba;
using static TorchSharp.torch;

namespace CombaDistill.Conversion;

/// <summary>
/// Initial values of the tensors a Comba layer adds to the teacher's q/k/v/o_proj. They are deterministic (the
/// same teacher always gives the same student) and chosen so that the untrained student is already a sensible
/// model: each layer starts as a data-independent, multi-timescale delta-rule memory over the teacher's own
/// projections, and every gate starts where its gradient is alive. docs/conversion.md gives the reasons at length.
/// </summary>
public static class CombaInitialization
{
    /// <summary>
    /// The decay rate −ln α of the slowest and the fastest head. Head h of H gets rate
    /// FastestRate · (SlowestRate / FastestRate)^(h / (H − 1)): memories from about one token (α = ½) to about
    /// 512 tokens (α = e^(−1/512)), so some heads can do what local attention heads did and some what long-range
    /// heads did, whichever those were in the teacher.
    /// </summary>
    public const double FastestRate = 0.6931471805599453, SlowestRate = 1.0 / 512;

    /// <summary>One line per new tensor key (below <c>self_attn.</c>): its initial value and why.</summary>
    public static readonly IReadOnlyDictionary<string, string> Descriptions = new Dictionary<string, string>
    {
        ["a_proj.weight"] = "zeros: the decay starts data-independent, set by A_log and dt_bias; the gradient still reaches it (as LoRA's B = 0)",
        ["b_proj.weight"] = "zeros: β = σ(0) = ½ for every token, a half-strength write that neither ignores nor overwrites the state",
        ["A_log"] = "zeros: A = 1, so α = exp(−softplus(dt_bias)) per head",
        ["dt_bias"] = $"softplus⁻¹ of decay rates log-spaced over heads from ln 2 to 1/512: memories of ~1 to ~512 tokens",
        ["lambda_logit"] = "logit(initial λ) from the options: the share of the state's own prediction the write removes",
        ["d"] = "initial d from the options: a small output correction, so the read-out starts near S q̂",
        ["q_conv.weight"] = "identity (last tap 1): the convolution passes the teacher's q through until trained",
        ["k_conv.weight"] = "identity (last tap 1): the convolution passes the teacher's k through until trained",
        ["v_conv.weight"] = "identity (last tap 1): the convolution passes the teacher's v through until trained",
        ["o_norm.weight"] = "ones: a plain per-head RMSNorm of the read-out",
    };

    /// <summary>The initial value of new tensor <paramref name="key"/> (below <c>self_attn.</c>), in float64 on the CPU.</summary>
    /// <exception cref="InvalidOperationException">for a tensor this class does not know: a new Comba parameter needs a documented initialisation here.</exception>
    public static Tensor Create(string key, long[] shape, CombaConfig options)
    {
        using var scope = NewDisposeScope();
        var heads = shape.Length > 0 ? shape[0] : 1;
        var value = key switch
        {
            "a_proj.weight" or "b_proj.weight" or "A_log" => zeros(shape, ScalarType.Float64),
            "dt_bias" => InverseSoftplus(DecayRates(heads)).reshape(shape),
            "lambda_logit" => full(shape, Math.Log(options.InitialLambda / (1 - options.InitialLambda)), ScalarType.Float64),
            "d" => full(shape, options.InitialD, ScalarType.Float64),
            "q_conv.weight" or "k_conv.weight" or "v_conv.weight" => IdentityKernel(shape),
            "o_norm.weight" => ones(shape, ScalarType.Float64),
            _ => throw new InvalidOperationException($"the converter has no initialisation for the new tensor 'self_attn.{key}'; add one to {nameof(CombaInitialization)} and docs/conversion.md"),
        };
        return value.MoveToOuterDisposeScope();
    }

    /// <summary>−ln α per head, log-spaced from <see cref="FastestRate"/> (head 0) to <see cref="SlowestRate"/> (last head).</summary>
    public static Tensor DecayRates(long heads)
    {
        if (heads == 1) return tensor(new[] { Math.Sqrt(FastestRate * SlowestRate) });
        var position = arange(heads, ScalarType.Float64) / (heads - 1);
        return (Math.Log(FastestRate) + position * (Math.Log(SlowestRate) - Math.Log(FastestRate))).exp();
    }

    /// <summary>softplus⁻¹(y) = y + log(1 − e^(−y)), stable for small and large y.</summary>
    static Tensor InverseSoftplus(Tensor y) => y + (-(-y).expm1()).log();

    /// <summary>(channels, 1, kernel) with the last tap 1: y_t = x_t.</summary>
    static Tensor IdentityKernel(long[] shape)
    {
        var kernel = zeros(shape, ScalarType.Float64);
        kernel[.., .., shape[^1] - 1] = 1;
        return kernel;
    }
}
