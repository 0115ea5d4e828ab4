using CombaDistill.Modeling.Comba;
using CombaDistill.Modeling.Llama;
using CombaDistill.Ops;
using CombaDistill.Tests.Ops;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Modeling;

public class CombaAttentionTests
{
    static readonly LlamaConfig Small = new()
    {
        HiddenSize = 24, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 6, QkvBias = true, OutputBias = true,
    };

    static readonly CombaConfig AllOn = new() { Rotary = "teacher", ShortConv = 4, OutputNorm = true, ChunkSize = 16, Scale = 0.8 };

    /// <summary>AllOn with the Taylor feature map and the normalised read-out (the stories260K recipe's layer).</summary>
    static readonly CombaConfig TaylorNormalized = AllOn with { FeatureMap = "taylor", NormalizeReadout = true, ReadoutEps = 0.05 };

    static CombaConfig Variant(string name) => name switch
    {
        "all options" => AllOn,
        "taylor, normalised" => TaylorNormalized,
        "plain" => new CombaConfig { Rotary = "none", ShortConv = 0, OutputNorm = false, ChunkSize = 32 },
        _ => throw new ArgumentException(name),
    };

    /// <summary>A module whose every parameter is random (not at its initial value), so the wiring test sees them all.</summary>
    static CombaAttention RandomModule(CombaConfig options, ScalarType dtype, long seed)
    {
        manual_seed(seed);
        var m = new CombaAttention("self_attn", Small, options, dtype: dtype);
        using (no_grad())
        {
            foreach (var (name, p) in m.named_parameters())
            {
                if (name is "A_log" or "dt_bias") continue;   // keep their Mamba-2 ranges
                p.copy_(randn_like(p) * (name.EndsWith("conv.weight") ? 0.5 : name.EndsWith("_proj.weight") ? 0.3 : 1.0));
            }
        }
        return m;
    }

    /// <summary>HF rotary tables (rotate_half convention) for positions 0 … T − 1.</summary>
    static (Tensor Cos, Tensor Sin) Rotary(long length, long headDim, ScalarType dtype)
    {
        var invFreq = pow(10000.0, -arange(0, headDim, 2, dtype: ScalarType.Float64) / headDim);
        var freqs = arange(length, dtype: ScalarType.Float64).unsqueeze(1) * invFreq.unsqueeze(0);
        var emb = cat([freqs, freqs], dim: 1);
        return (emb.cos().to(dtype), emb.sin().to(dtype));
    }

    /// <summary>
    /// The layer recomputed from its parameters by hand: explicit matmuls, the causal convolution as a sum of shifted
    /// copies, rotate_half by index, the gate formulas, GQA by repeat, and the Naive recurrence.
    /// </summary>
    static Tensor Reference(CombaAttention m, Tensor x, Tensor cos, Tensor sin)
    {
        var (B, T) = (x.shape[0], x.shape[1]);
        var (H, Hkv, D) = (Small.NumAttentionHeads, Small.NumKeyValueHeads, Small.HeadDim);
        Tensor Project(TorchSharp.Modules.Linear l, Tensor input) => input.matmul(l.weight!.t()) + (l.bias is null ? 0 : l.bias);
        Tensor Conv(ShortConvolution? c, Tensor input)
        {
            if (c is null) return input;
            var w = c.weight;                                     // (channels, 1, K)
            var K = w.shape[2];
            var padded = nn.functional.pad(input, [0, 0, K - 1, 0]);
            var sum = zeros_like(input);
            for (long i = 0; i < K; i++) sum += padded.narrow(1, i, T) * w[.., 0, i];
            return sum;
        }
        Tensor Heads(Tensor t, long n) => t.view(B, T, n, D).transpose(1, 2);
        Tensor Rope(Tensor t)
        {
            if (m.Options.Rotary != "teacher") return t;
            var half = D / 2;
            var rotated = cat([-t[.., .., .., half..], t[.., .., .., ..(int)half]], dim: -1);
            return t * cos + rotated * sin;
        }
        var q = Rope(Heads(Conv(m.q_conv, Project(m.q_proj, x)), H));
        var k = Rope(Heads(Conv(m.k_conv, Project(m.k_proj, x)), Hkv));
        var v = Heads(Conv(m.v_conv, Project(m.v_proj, x)), Hkv);
        if (m.Options.FeatureMap == "taylor")
        {
            // every product x_i x_j (D² of them, not the symmetric half the module keeps): the recurrence's output
            // depends on the features only through their inner products, which are the same
            Tensor Features(Tensor t) => cat([ones_like(t.narrow(-1, 0, 1)), t / Math.Pow(D, 0.25),
                (t.unsqueeze(-1) * t.unsqueeze(-2)).flatten(-2) / Math.Sqrt(2.0 * D)], -1);
            (q, k) = (Features(q), Features(k));
        }
        var g = (-m.A_log.exp() * nn.functional.softplus(Project(m.a_proj, x) + m.dt_bias)).transpose(1, 2);
        var beta = Project(m.b_proj, x).sigmoid().transpose(1, 2);
        var (o, _) = NaiveComba.Forward(q, k, v, g, beta, m.lambda_logit.sigmoid(), m.d, m.Options.Scale);
        if (m.Options.NormalizeReadout)
        {
            // the weights' sum: the same recurrence reading out values that are all one
            var (z, _) = NaiveComba.Forward(q, k, ones_like(v.narrow(-1, 0, 1)), g, beta, m.lambda_logit.sigmoid(), m.d, m.Options.Scale);
            o = o / (z.abs() + m.Options.ReadoutEps);
        }
        if (m.o_norm is not null) o = o * (o.pow(2).mean([-1], keepdim: true) + m.Options.NormEps).rsqrt() * m.o_norm.weight;
        return Project(m.o_proj, o.transpose(1, 2).reshape(B, T, H * D));
    }

    [Theory]
    [InlineData("all options", 6, 6)]
    [InlineData("plain", 6, 6)]
    [InlineData("taylor, normalised", 1 + 6 + 21, 6 + 1)]
    public void Forward_equals_the_layer_recomputed_by_hand_in_float64(string variant, long keyDim, long valueDim)
    {
        using var scope = NewDisposeScope();
        var options = Variant(variant);
        var m = RandomModule(options, ScalarType.Float64, 1);
        var x = randn([2, 45, Small.HiddenSize], dtype: ScalarType.Float64);
        var (cos, sin) = Rotary(45, Small.HeadDim, ScalarType.Float64);
        var (y, state) = m.forward(x, cos, sin);
        Compare.Close(y, Reference(m, x, cos, sin), 1e-10, "layer output");
        Assert.Equal(new long[] { 2, 4, keyDim, valueDim }, state.Recurrent.shape);
        Assert.Equal((keyDim, valueDim), (options.KeyDim(Small.HeadDim), options.ValueDim(Small.HeadDim)));
        Assert.Equal(options.ShortConv > 0, state.QConv is not null);
    }

    [Theory]
    [InlineData("all options")]
    [InlineData("taylor, normalised")]
    public void Gradients_of_every_parameter_and_the_input_equal_the_Naive_reference(string variant)
    {
        using var scope = NewDisposeScope();
        var m = RandomModule(Variant(variant), ScalarType.Float64, 2);
        var x = randn([2, 37, Small.HiddenSize], dtype: ScalarType.Float64).requires_grad_(true);
        var (cos, sin) = Rotary(37, Small.HeadDim, ScalarType.Float64);
        var weights = randn([2, 37, Small.HiddenSize], dtype: ScalarType.Float64);
        var parameters = m.named_parameters().ToList();

        Tensor[] Grads(Func<Tensor> loss)
        {
            m.zero_grad();
            x.grad?.zero_();
            loss().backward();
            return parameters.Select(p => p.parameter.grad!.clone()).Append(x.grad!.clone()).ToArray();
        }
        var actual = Grads(() => (m.forward(x, cos, sin).Output * weights).sum());
        var expected = Grads(() => (Reference(m, x, cos, sin) * weights).sum());
        for (int i = 0; i < parameters.Count; i++)
            Compare.Close(actual[i], expected[i], 1e-8, $"gradient of {parameters[i].name}");
        Compare.Close(actual[^1], expected[^1], 1e-8, "gradient of the input");
    }

    [Theory]
    [InlineData(ScalarType.Float64, 1e-10, "all options")]
    [InlineData(ScalarType.Float32, 1e-5, "all options")]
    [InlineData(ScalarType.Float64, 1e-10, "taylor, normalised")]
    [InlineData(ScalarType.Float32, 1e-4, "taylor, normalised")]
    public void Prefill_in_two_parts_then_decoding_token_by_token_equals_one_forward(ScalarType dtype, double tolerance, string variant)
    {
        using var scope = NewDisposeScope();
        var m = RandomModule(Variant(variant), dtype, 3);
        const int length = 50;
        var x = randn([2, length, Small.HiddenSize], dtype: dtype);
        var (cos, sin) = Rotary(length, Small.HeadDim, dtype);
        var (whole, wholeState) = m.forward(x, cos, sin);

        Tensor Span(Tensor t, int dim, int start, int count) => t.narrow(dim, start, count);
        var (first, state) = m.forward(Span(x, 1, 0, 23), Span(cos, 0, 0, 23), Span(sin, 0, 0, 23));
        var (second, state2) = m.forward(Span(x, 1, 23, 17), Span(cos, 0, 23, 17), Span(sin, 0, 23, 17), state);
        var pieces = new List<Tensor> { first, second };
        state = state2;
        for (int t = 40; t < length; t++)
        {
            var (y, next) = m.forward(Span(x, 1, t, 1), Span(cos, 0, t, 1), Span(sin, 0, t, 1), state);
            pieces.Add(y);
            state = next;
        }
        Compare.Close(cat(pieces, dim: 1), whole, tolerance, "outputs");
        Compare.Close(state.Recurrent, wholeState.Recurrent, tolerance, "recurrent state");
        Compare.Close(state.QConv!, wholeState.QConv!, tolerance, "q convolution cache");
        Compare.Close(state.VConv!, wholeState.VConv!, tolerance, "v convolution cache");
    }

    /// <summary>
    /// The normalised read-out is a weighted average of the stored values: when every value is the same vector u, each
    /// head returns u itself (times |z| / (|z| + ε), which tends to one as ε does), whatever the keys, gates and d.
    /// </summary>
    [Fact]
    public void A_normalised_read_out_of_identical_values_returns_that_value()
    {
        using var scope = NewDisposeScope();
        var m = RandomModule(TaylorNormalized with { ShortConv = 0, OutputNorm = false, ReadoutEps = 1e-9 }, ScalarType.Float64, 6);
        var (H, D) = (Small.NumAttentionHeads, Small.HeadDim);
        var u = randn([Small.NumKeyValueHeads * D], dtype: ScalarType.Float64);
        using (no_grad())
        {
            m.v_proj.weight!.zero_();
            m.v_proj.bias!.copy_(u);                                             // v_t = u for every token
            m.o_proj.weight!.copy_(eye(Small.HiddenSize, H * D, dtype: ScalarType.Float64));   // y = the read-out itself
            m.o_proj.bias!.zero_();
        }
        var x = randn([2, 30, Small.HiddenSize], dtype: ScalarType.Float64);
        var (cos, sin) = Rotary(30, D, ScalarType.Float64);
        var y = m.forward(x, cos, sin).Output;
        // query head h reads KV head h / (H / Hkv)
        var expected = u.view(Small.NumKeyValueHeads, 1, D).expand(-1, H / Small.NumKeyValueHeads, -1).reshape(1, 1, H * D);
        Compare.Close(y.abs(), expected.abs().expand_as(y), 1e-6, "|read-out| of identical values");
    }

    [Fact]
    public void A_fresh_short_convolution_is_the_identity()
    {
        using var scope = NewDisposeScope();
        var withConv = RandomModule(AllOn with { ShortConv = 0 }, ScalarType.Float64, 4);
        manual_seed(5);
        var fresh = new CombaAttention("self_attn", Small, AllOn, dtype: ScalarType.Float64);
        var loaded = fresh.load_state_dict(withConv.state_dict(), strict: false);
        Assert.Equal(["k_conv.weight", "q_conv.weight", "v_conv.weight"], loaded.missing_keys.Order().ToArray());
        Assert.Empty(loaded.unexpected_keyes);
        var x = randn([1, 20, Small.HiddenSize], dtype: ScalarType.Float64);
        var (cos, sin) = Rotary(20, Small.HeadDim, ScalarType.Float64);
        Compare.Close(fresh.forward(x, cos, sin).Output, withConv.forward(x, cos, sin).Output, 1e-13, "conv at init vs no conv");
    }

    [Fact]
    public void State_dict_keys_are_Hugging_Face_style_and_GQA_keeps_the_teacher_KV_width()
    {
        var m = new CombaAttention("self_attn", Small, AllOn);
        var keys = m.state_dict().Keys.Order().ToArray();
        string[] expected =
        [
            "A_log", "a_proj.weight", "b_proj.weight", "d", "dt_bias", "k_conv.weight", "k_proj.bias", "k_proj.weight",
            "lambda_logit", "o_norm.weight", "o_proj.bias", "o_proj.weight", "q_conv.weight", "q_proj.bias", "q_proj.weight",
            "v_conv.weight", "v_proj.bias", "v_proj.weight",
        ];
        Assert.Equal(expected.Order().ToArray(), keys);
        Assert.Equal(new long[] { 2 * 6, 24 }, m.k_proj.weight!.shape);      // Hkv · D, not H · D
        Assert.Equal(new long[] { 2 * 6, 1, 4 }, m.k_conv!.weight.shape);

        var plain = new CombaAttention("self_attn", Small with { QkvBias = false, OutputBias = false }, new CombaConfig { ShortConv = 0 });
        Assert.Equal(["A_log", "a_proj.weight", "b_proj.weight", "d", "dt_bias", "k_proj.weight", "lambda_logit", "o_proj.weight", "q_proj.weight", "v_proj.weight"],
            plain.state_dict().Keys.Order().ToArray());
    }

    [Fact]
    public void Initial_gates_follow_the_configuration()
    {
        using var scope = NewDisposeScope();
        var m = new CombaAttention("self_attn", Small, new CombaConfig { InitialD = 0.1, InitialLambda = 0.25 }, dtype: ScalarType.Float64);
        Assert.All(m.lambda_logit.sigmoid().data<double>().ToArray(), l => Assert.Equal(0.25, l, 12));
        Assert.All(m.d.data<double>().ToArray(), v => Assert.Equal(0.1, v, 12));
        Assert.All(m.A_log.exp().data<double>().ToArray(), a => Assert.InRange(a, 1, 16));
        Assert.All(nn.functional.softplus(m.dt_bias).data<double>().ToArray(), dt => Assert.InRange(dt, 1e-3 * (1 - 1e-9), 1e-1 * (1 + 1e-9)));
    }

    [Fact]
    public void Extra_parameters_are_counted_exactly_and_are_a_small_fraction_of_a_Llama_layer()
    {
        var m = new CombaAttention("self_attn", Small, AllOn);
        long H = 4, Hkv = 2, D = 6, hidden = 24;
        long expectedExtra = 2 * hidden * H + 4 * H + 4 * (H * D + 2 * Hkv * D) + D;
        Assert.Equal(expectedExtra, m.ExtraParameterCount);
        Assert.Equal(m.parameters().Sum(p => p.numel()), m.ExtraParameterCount + m.ProjectionParameterCount);

        // Llama-3-8B-shaped layer, built on the meta device (no memory)
        var llama8B = new LlamaConfig { HiddenSize = 4096, NumAttentionHeads = 32, NumKeyValueHeads = 8, HeadDim = 128 };
        var big = new CombaAttention("self_attn", llama8B, AllOn, device: new Device(DeviceType.META));
        Assert.Equal(4096L * 4096 * 2 + 4096L * 1024 * 2, big.ProjectionParameterCount);
        Assert.Equal(2 * 4096 * 32 + 4 * 32 + 4 * (4096 + 2 * 1024) + 128, big.ExtraParameterCount);   // 286,976 = 0.68 % of 41,943,040
        Assert.True(big.ExtraParameterCount < 0.01 * big.ProjectionParameterCount);
    }

    [Fact]
    public void Rotary_teacher_without_tables_is_a_clear_error()
    {
        using var scope = NewDisposeScope();
        var m = new CombaAttention("self_attn", Small, AllOn);
        var e = Assert.Throws<ArgumentException>(() => m.forward(randn(1, 3, 24)));
        Assert.Contains("cos/sin", e.Message);
    }
}
