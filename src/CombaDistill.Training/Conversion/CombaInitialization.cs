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

    /// <summary>One short line per new tensor key (below <c>self_attn.</c>): its initial value and what that means; docs/conversion.md says why.</summary>
    public static string Describe(string key, CombaConfig options) => key switch
    {
        "a_proj.weight" => "zeros: the decay starts token-independent",
        "b_proj.weight" => "zeros: β = σ(0) = ½ for every token",
        "A_log" => "zeros: A = 1",
        "dt_bias" => "softplus⁻¹ of decay rates from ln 2 to 1/512, log-spaced over heads: memories of ~1 to ~512 tokens",
        "lambda_logit" => $"logit({options.InitialLambda}): λ = {options.InitialLambda}",
        "d" => $"{options.InitialD}: read-out S (q̂ − ({options.InitialD}) k̂)",
        "q_conv.weight" or "k_conv.weight" or "v_conv.weight" => $"identity: passes the teacher's {key[0]} through",
        "o_norm.weight" => "ones",
        _ => throw new InvalidOperationException($"the converter has no initialisation for the new tensor 'self_attn.{key}'; add one to {nameof(CombaInitialization)} and docs/conversion.md"),
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
