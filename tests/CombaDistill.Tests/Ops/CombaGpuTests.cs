using CombaDistill.Modeling.Comba;
using CombaDistill.Modeling.Llama;
using CombaDistill.Ops;
using CombaDistill.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Ops;

/// <summary>
/// GPU lane: the Comba ops on CUDA. bf16 inputs are compared with the float64 Naive reference computed on CPU from the
/// same (bf16-rounded) numbers, relative error ≤ 5e-3; float64 and float32 on CUDA keep the CPU tolerances.
/// </summary>
public class CombaGpuTests
{
    const double Bf16Tolerance = 5e-3;

    public static TheoryData<int, int, int, int, int, int, int, bool> Shapes() => new()
    {
        // B, Hkv, G, T, Dk, Dv, chunk, state
        { 2, 2, 2, 1, 64, 64, 64, false },
        { 2, 2, 2, 333, 64, 64, 64, true },
        { 1, 4, 1, 1000, 128, 128, 64, false },
        { 2, 1, 4, 517, 128, 64, 128, true },
        { 3, 2, 3, 200, 32, 48, 16, true },
        { 1, 2, 2, 260, 64, 64, 32, false },
    };

    static (Tensor O, Tensor S) Naive(CombaInputs x) => NaiveComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, x.Scale, x.State);
    static (Tensor O, Tensor S) Chunkwise(CombaInputs x, int chunk) => ChunkwiseComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, x.Scale, x.State, chunk);

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Chunkwise_on_CUDA_matches_the_float64_reference(int batch, int kvHeads, int groups, int length, int dk, int dv, int chunk, bool withState)
    {
        Gpu.Require();
        using var scope = NewDisposeScope();
        var c = new CombaCase(batch, kvHeads, groups, length, dk, dv, chunk, withState, Seed: length * 31 + dk);
        using var bf16 = CombaInputs.Random(c).To(ScalarType.BFloat16, CUDA);
        using var reference = bf16.To(ScalarType.Float64, CPU);
        var (oRef, sRef) = Naive(reference);

        var (o, s) = Chunkwise(bf16, chunk);
        Assert.Equal(ScalarType.BFloat16, o.dtype);
        Compare.Close(o, oRef, Bf16Tolerance, $"bf16 output [{c}]");
        Compare.Close(s, sRef, Bf16Tolerance, $"bf16 final state [{c}]");

        using var f64 = reference.To(ScalarType.Float64, CUDA);
        var (o64, s64) = Chunkwise(f64, chunk);
        Compare.Close(o64, oRef, 1e-10, $"float64 output on CUDA [{c}]");
        Compare.Close(s64, sRef, 1e-10, $"float64 final state on CUDA [{c}]");

        using var f32 = reference.To(ScalarType.Float32, CUDA);
        var (o32, s32) = Chunkwise(f32, chunk);
        Compare.Close(o32, oRef, 1e-5, $"float32 output on CUDA [{c}]");
        Compare.Close(s32, sRef, 1e-5, $"float32 final state on CUDA [{c}]");
    }

    [Fact]
    public void Gradients_on_CUDA_match_the_float64_reference()
    {
        Gpu.Require();
        using var scope = NewDisposeScope();
        var c = new CombaCase(Batch: 2, KvHeads: 2, Groups: 2, Length: 150, KeyDim: 64, ValueDim: 64, ChunkSize: 64, WithState: true, Seed: 3);
        using var bf16 = CombaInputs.Random(c).To(ScalarType.BFloat16, CUDA);
        var weightO = randn([c.Batch, c.Heads, c.Length, c.ValueDim], dtype: ScalarType.Float64);
        var weightS = randn([c.Batch, c.Heads, c.KeyDim, c.ValueDim], dtype: ScalarType.Float64);

        Tensor[] Grads(CombaInputs x, Func<CombaInputs, (Tensor O, Tensor S)> op)
        {
            var leaves = x.To(x.Q.dtype, x.Q.device).RequiringGrad();
            var (o, s) = op(leaves);
            ((o.to(ScalarType.Float64, CPU) * weightO).sum() + (s.to(ScalarType.Float64, CPU) * weightS).sum()).backward();
            return leaves.All.Select(t => t.grad!.detach().to(ScalarType.Float64, CPU)).ToArray();
        }
        var expected = Grads(bf16.To(ScalarType.Float64, CPU), Naive);
        var actual64 = Grads(bf16.To(ScalarType.Float64, CUDA), x => Chunkwise(x, 64));
        var actual16 = Grads(bf16, x => Chunkwise(x, 64));
        string[] names = ["q", "k", "v", "g", "beta", "lambda", "d", "initial state"];
        for (int i = 0; i < expected.Length; i++)
        {
            Compare.Close(actual64[i], expected[i], 1e-8, $"float64 CUDA gradient of {names[i]}");
            Compare.Close(actual16[i], expected[i], Bf16Tolerance, $"bf16 CUDA gradient of {names[i]}");
        }
    }

    [Fact]
    public void Prefill_on_CUDA_then_recurrent_steps_matches_one_chunkwise_pass()
    {
        Gpu.Require();
        using var scope = NewDisposeScope();
        var c = new CombaCase(Batch: 2, KvHeads: 2, Groups: 4, Length: 300, KeyDim: 128, ValueDim: 128, ChunkSize: 64, WithState: false, Seed: 4);
        using var x = CombaInputs.Random(c).To(ScalarType.BFloat16, CUDA);
        using var reference = x.To(ScalarType.Float64, CPU);
        var (oRef, sRef) = Naive(reference);
        const int prefill = 257;
        Tensor Head(Tensor t) => t.narrow(2, 0, prefill);
        var (first, state) = ChunkwiseComba.Forward(Head(x.Q), Head(x.K), Head(x.V), Head(x.G), Head(x.Beta), x.Lambda, x.D, x.Scale);
        var outputs = new List<Tensor> { first };
        for (int t = prefill; t < c.Length; t++)
        {
            var (o, next) = RecurrentComba.Step(x.Q.select(2, t), x.K.select(2, t), x.V.select(2, t), x.G.select(2, t), x.Beta.select(2, t), x.Lambda, x.D, x.Scale, state);
            outputs.Add(o.unsqueeze(2));
            state = next;
        }
        Compare.Close(cat(outputs, dim: 2), oRef, Bf16Tolerance, "prefill + steps outputs");
        Compare.Close(state, sRef, Bf16Tolerance, "prefill + steps state");
    }

    [Fact]
    public void Edge_cases_on_CUDA_in_bf16_stay_finite_and_correct()
    {
        Gpu.Require();
        using var scope = NewDisposeScope();
        var c = new CombaCase(Batch: 2, KvHeads: 1, Groups: 2, Length: 300, KeyDim: 64, ValueDim: 64, ChunkSize: 64, WithState: true, Seed: 5);
        void Check(CombaInputs x64, string what)
        {
            using var bf16 = x64.To(ScalarType.BFloat16, CUDA);
            using var reference = bf16.To(ScalarType.Float64, CPU);
            var (oRef, sRef) = Naive(reference);
            var (o, s) = Chunkwise(bf16, 64);
            Compare.Close(o, oRef, Bf16Tolerance, $"{what}: output");
            Compare.Close(s, sRef, Bf16Tolerance, $"{what}: state");
        }
        using var noDecay = CombaInputs.Random(c);
        noDecay.G.zero_();
        Check(noDecay, "g = 0");
        using var betaOne = CombaInputs.Random(c);
        betaOne.Beta.fill_(1.0);             // bf16 has no number just below 1 that is far from it: use β = 1, λ = 1
        betaOne.Lambda.fill_(1.0);
        betaOne.G.narrow(2, 150, 150).fill_(-3.0);
        Check(betaOne, "β = 1, λ = 1");
        using var strong = CombaInputs.Random(c, logDecayMax: 60);
        Check(strong, "g ∈ (−60, 0)");
    }

    [Fact]
    public void Sixteen_thousand_tokens_on_CUDA_in_bf16()
    {
        Gpu.Require();
        using var scope = NewDisposeScope();
        var c = new CombaCase(Batch: 1, KvHeads: 2, Groups: 2, Length: 16384, KeyDim: 64, ValueDim: 64, ChunkSize: 64, WithState: false, Seed: 6);
        using var x = CombaInputs.Random(c, logDecayMax: 0.05);
        x.G.narrow(2, 4000, 4000).zero_();
        x.Beta.narrow(2, 4000, 4000).fill_(1.0);
        x.V.mul_(100);
        using var bf16 = x.To(ScalarType.BFloat16, CUDA);
        using var reference = bf16.To(ScalarType.Float64, CPU);
        var (oRef, sRef) = RecurrentComba.Forward(reference.Q, reference.K, reference.V, reference.G, reference.Beta, reference.Lambda, reference.D, reference.Scale);
        var (o, s) = Chunkwise(bf16, 64);
        Compare.Close(o, oRef, Bf16Tolerance, "T = 16384 bf16 output");
        Compare.Close(s, sRef, Bf16Tolerance, "T = 16384 bf16 state");
    }

    [Fact]
    public void CombaAttention_on_CUDA_in_bf16_decodes_like_its_prefill()
    {
        Gpu.Require();
        using var scope = NewDisposeScope();
        var model = new LlamaConfig { HiddenSize = 512, NumAttentionHeads = 8, NumKeyValueHeads = 2, HeadDim = 64 };
        manual_seed(7);
        var m = new CombaAttention("self_attn", model, new CombaConfig { ShortConv = 4, OutputNorm = true });
        m.to(CUDA, ScalarType.BFloat16);
        var x = randn([2, 140, 512], device: CUDA).to(ScalarType.BFloat16);
        var (whole, wholeState) = m.forward(x);
        var (first, state) = m.forward(x.narrow(1, 0, 130));
        var pieces = new List<Tensor> { first };
        for (int t = 130; t < 140; t++)
        {
            var (y, next) = m.forward(x.narrow(1, t, 1), state: state);
            pieces.Add(y);
            state = next;
        }
        Compare.Close(cat(pieces, dim: 1), whole, 1e-2, "bf16 layer: prefill + decode vs one pass");
        Compare.Close(state.Recurrent, wholeState.Recurrent, 1e-2, "bf16 layer state");
    }
    /// <summary>
    /// A layer with the teacher's rotary and short convolutions, as the 1B recipe converts it: on CUDA in bf16 the op
    /// rotates q and k inside the kernels and reads them in the projections' layout, the convolutions run as kernels;
    /// the same weights in float64 on the CPU take none of that. Their outputs and every parameter's gradient agree to
    /// bf16's band, and decoding step by step (rotary as tensor ops at each position) continues the kernels' prefill.
    /// </summary>
    [Fact]
    public void A_rotary_layer_on_the_bf16_kernels_matches_float64_on_the_CPU_and_its_own_decoding()
    {
        Gpu.Require();
        using var scope = NewDisposeScope();
        var model = new LlamaConfig { HiddenSize = 512, NumAttentionHeads = 8, NumKeyValueHeads = 2, HeadDim = 64 };
        manual_seed(11);
        var reference = new CombaAttention("self_attn", model, new CombaConfig { ShortConv = 4, Rotary = "teacher", InitialD = 0.02 });
        reference.to(ScalarType.Float64);
        using (no_grad())
            foreach (var p in reference.parameters()) p.add_(randn_like(p) * 0.02);   // convolutions off the identity
        var layer = new CombaAttention("self_attn", model, new CombaConfig { ShortConv = 4, Rotary = "teacher", InitialD = 0.02 });
        layer.load_state_dict(reference.state_dict());
        layer.to(CUDA, ScalarType.BFloat16);
        var rotary = new CombaDistill.Modeling.RotaryEmbedding(64, 500000);
        var x = (randn([2, 150, 512], dtype: ScalarType.Float64)).to(ScalarType.BFloat16).to(ScalarType.Float64);
        var weight = randn([2, 150, 512], dtype: ScalarType.Float64);

        var (cos64, sin64) = rotary.CosSin(0, 150, ScalarType.Float64, CPU);
        var expected = reference.forward(x, cos64, sin64).Output;
        (expected * weight).sum().backward();
        var (cos, sin) = rotary.CosSin(0, 150, ScalarType.BFloat16, CUDA);
        var actual = layer.forward(x.to(ScalarType.BFloat16, CUDA), cos, sin).Output;
        (actual.to(ScalarType.Float64) * weight.to(CUDA)).sum().backward();
        Compare.Close(actual.to(ScalarType.Float64, CPU), expected, 2e-2, "rotary layer output, bf16 kernels vs float64");
        var grads = layer.named_parameters().ToDictionary(p => p.name, p => p.parameter.grad);
        foreach (var (name, p) in reference.named_parameters())
            Compare.Close(grads[name]!.to(ScalarType.Float64, CPU), p.grad!, 3e-2, $"gradient of {name}, bf16 kernels vs float64");

        using (no_grad())
        {
            var xc = x.to(ScalarType.BFloat16, CUDA);
            var (first, state) = layer.forward(xc.narrow(1, 0, 140), cos.narrow(0, 0, 140), sin.narrow(0, 0, 140));
            var pieces = new List<Tensor> { first };
            for (int t = 140; t < 150; t++)
            {
                var (y, next) = layer.forward(xc.narrow(1, t, 1), cos.narrow(0, t, 1), sin.narrow(0, t, 1), state);
                pieces.Add(y);
                state = next;
            }
            Compare.Close(cat(pieces, dim: 1).to(ScalarType.Float64, CPU), actual.detach().to(ScalarType.Float64, CPU), 1e-2, "rotary layer: prefill + decode vs one pass");
        }
    }
}
