using static TorchSharp.torch;

namespace CombaDistill.Tests.Ops;

/// <summary>One random Comba problem: sizes, gate ranges and a seed, so CsCheck can shrink it and print it.</summary>
public sealed record CombaCase(int Batch, int KvHeads, int Groups, int Length, int KeyDim, int ValueDim, int ChunkSize, bool WithState, long Seed)
{
    public int Heads => KvHeads * Groups;
    public override string ToString() =>
        $"B={Batch} Hkv={KvHeads} G={Groups} T={Length} Dk={KeyDim} Dv={ValueDim} C={ChunkSize} state={WithState} seed={Seed}";
}

/// <summary>The tensors of a <see cref="CombaCase"/>, generated in float64 and converted as asked.</summary>
public sealed class CombaInputs : IDisposable
{
    public required Tensor Q, K, V, G, Beta, Lambda, D;
    public Tensor? State;
    public double Scale = 0.7;

    public Tensor[] All => State is null ? [Q, K, V, G, Beta, Lambda, D] : [Q, K, V, G, Beta, Lambda, D, State];

    /// <param name="logDecayMax">|g| is drawn from (0, logDecayMax)</param>
    public static CombaInputs Random(CombaCase c, ScalarType dtype = ScalarType.Float64, double logDecayMax = 1.0, Device? device = null)
    {
        var gen = new Generator((ulong)c.Seed);
        var f = ScalarType.Float64;
        Tensor Randn(params long[] shape) => randn(shape, dtype: f, generator: gen);
        Tensor Rand(params long[] shape) => rand(shape, dtype: f, generator: gen);
        var inputs = new CombaInputs
        {
            Q = Randn(c.Batch, c.Heads, c.Length, c.KeyDim),
            K = Randn(c.Batch, c.KvHeads, c.Length, c.KeyDim),
            V = Randn(c.Batch, c.KvHeads, c.Length, c.ValueDim),
            G = -logDecayMax * Rand(c.Batch, c.Heads, c.Length),
            Beta = Rand(c.Batch, c.Heads, c.Length) * 0.98 + 0.01,
            Lambda = Rand(c.Heads) * 0.9 + 0.1,
            D = Randn(c.Heads) * 0.3,
            State = c.WithState ? Randn(c.Batch, c.Heads, c.KeyDim, c.ValueDim) : null,
        };
        return inputs.To(dtype, device ?? CPU);
    }

    public CombaInputs To(ScalarType dtype, Device device)
    {
        Tensor Conv(Tensor t) => t.to(dtype, device).detach();
        return new CombaInputs
        {
            Q = Conv(Q), K = Conv(K), V = Conv(V), G = Conv(G), Beta = Conv(Beta), Lambda = Conv(Lambda), D = Conv(D),
            State = State is null ? null : Conv(State), Scale = Scale,
        };
    }

    public CombaInputs RequiringGrad()
    {
        foreach (var t in All) t.requires_grad_(true);
        return this;
    }

    public void Dispose()
    {
        foreach (var t in All) t.Dispose();
    }
}

public static class Compare
{
    /// <summary>‖a − b‖ / ‖b‖ in float64 (Frobenius norms over the whole tensor).</summary>
    public static double RelativeError(Tensor actual, Tensor expected)
    {
        using var scope = NewDisposeScope();
        var a = actual.detach().to(ScalarType.Float64, CPU);
        var e = expected.detach().to(ScalarType.Float64, CPU);
        Assert.Equal(e.shape, a.shape);
        var denominator = e.norm().item<double>();
        var difference = (a - e).norm().item<double>();
        return denominator == 0 ? difference : difference / denominator;
    }

    /// <summary>max |a − b| / max |b| in float64: the largest elementwise difference against the largest reference value.</summary>
    public static double WorstRelative(Tensor actual, Tensor expected)
    {
        using var scope = NewDisposeScope();
        var e = expected.detach().to(ScalarType.Float64, CPU);
        var a = actual.detach().to(ScalarType.Float64, CPU);
        Assert.Equal(e.shape, a.shape);
        return (a - e).abs().max().item<double>() / Math.Max(1e-12, e.abs().max().item<double>());
    }

    public static void Close(Tensor actual, Tensor expected, double tolerance, string what)
    {
        Assert.True(actual.isfinite().all().item<bool>(), $"{what}: non-finite values");
        var error = RelativeError(actual, expected);
        Assert.True(error <= tolerance, $"{what}: relative error {error:E3} > {tolerance:E1}");
    }
}
