using CombaDistill.Modeling.Llama;
using static TorchSharp.torch;

namespace CombaDistill.Modeling;

/// <summary>
/// Rotary position embedding in Hugging Face's "rotate_half" layout: dimension i of a head pairs with
/// dimension i + D/2, both turned by the angle position·inv_freq[i]. The cos/sin tables are computed
/// on demand (they are cheap and keep devices and dtypes out of module state), in float32 as Hugging
/// Face does, then cast to the activations' dtype.
/// </summary>
public sealed class RotaryEmbedding
{
    public int HeadDim { get; }

    /// <summary>inv_freq[i] for i in [0, HeadDim/2), after any rope_scaling.</summary>
    public IReadOnlyList<double> InverseFrequencies { get; }

    public RotaryEmbedding(int headDim, double theta, RopeScaling? scaling = null)
    {
        if (headDim <= 0 || headDim % 2 != 0) throw new ArgumentException($"rotary head dimension must be positive and even, got {headDim}");
        HeadDim = headDim;
        var inverse = new double[headDim / 2];
        for (var i = 0; i < inverse.Length; i++) inverse[i] = 1.0 / Math.Pow(theta, 2.0 * i / headDim);
        InverseFrequencies = scaling switch
        {
            null => inverse,
            { Type: "linear" } => inverse.Select(f => f / scaling.Factor).ToArray(),
            { Type: "llama3" } => inverse.Select(f => Llama3Scaled(f, scaling)).ToArray(),
            _ => throw new ArgumentException($"rope_scaling type '{scaling.Type}' is not supported (llama3, linear)"),
        };
    }

    public static RotaryEmbedding For(LlamaConfig config) => new(config.HeadDim, config.RopeTheta, config.RopeScaling);

    /// <summary>
    /// Llama 3.1's frequency-dependent interpolation: wavelengths longer than the original context
    /// divided by low_freq_factor are slowed down by the full factor, those shorter than it divided by
    /// high_freq_factor are kept, and the band between blends the two linearly in original_context/wavelength.
    /// </summary>
    static double Llama3Scaled(double inverseFrequency, RopeScaling s)
    {
        var wavelength = 2 * Math.PI / inverseFrequency;
        var lowFrequencyWavelength = s.OriginalMaxPositionEmbeddings / s.LowFreqFactor;
        var highFrequencyWavelength = s.OriginalMaxPositionEmbeddings / s.HighFreqFactor;
        if (wavelength > lowFrequencyWavelength) return inverseFrequency / s.Factor;
        if (wavelength < highFrequencyWavelength) return inverseFrequency;
        var smooth = (s.OriginalMaxPositionEmbeddings / wavelength - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
        return (1 - smooth) * inverseFrequency / s.Factor + smooth * inverseFrequency;
    }

    /// <summary>cos and sin tables, each (length, HeadDim), for positions [start, start + length).</summary>
    public (Tensor cos, Tensor sin) CosSin(long start, long length, ScalarType dtype, Device device)
    {
        using var scope = NewDisposeScope();
        var positions = arange(start, start + length, ScalarType.Float32, device);
        var inverse = tensor(InverseFrequencies.Select(f => (float)f).ToArray(), device: device);
        var half = outer(positions, inverse);
        var angles = cat([half, half], dim: -1);
        return (angles.cos().to(dtype).MoveToOuterDisposeScope(), angles.sin().to(dtype).MoveToOuterDisposeScope());
    }

    /// <summary>Rotates x (B, H, T, D) by tables (T, D) from <see cref="CosSin"/>.</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin) => Ops.Rotary.Apply(x, cos, sin);
}
