using CombaDistill.Modeling;
using CombaDistill.Ops;
using CombaDistill.Runtime.Cuda;
using CombaDistill.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Ops;

/// <summary>
/// The fused CUDA kernels (GPU lane) against the float64 Naive reference computed on CPU from the same numbers:
/// outputs, final state and every gradient, relative error ≤ 1e-5 from float32 inputs and ≤ 2e-3 from bf16 inputs
/// (the bf16 output's own rounding is about 1.6e-3 of that). The bf16 case keeps gates and parameters in float32, as a
/// mixed-precision model does. The kernels alone (tools/kernels/comba_check.py) are within 1.5e-6 in float32 and
/// 5e-4 on tensor cores, on every gradient; the bf16 kernels (bf16 operands, D = 64 and 128) to 1e-2. Shapes include T not a multiple of 64, GQA, one token,
/// head dims 64/128/256 and an initial state. On CPU the fused op is the chunkwise op, exactly.
/// </summary>
public class FusedCombaTests
{
    public static TheoryData<int, int, int, int, int, bool> Shapes() => new()
    {
        // B, Hkv, G, T, D, initial state
        { 2, 2, 2, 150, 64, true },
        { 1, 1, 4, 333, 128, false },
        { 2, 2, 1, 1, 64, false },
        { 1, 2, 2, 64, 128, true },
        { 1, 1, 2, 97, 256, true },
    };

    static (Tensor O, Tensor S) Naive(CombaInputs x) => NaiveComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, x.Scale, x.State);
    static (Tensor O, Tensor S) Fused(CombaInputs x) => FusedComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, x.Scale, x.State);
    static Func<CombaInputs, (Tensor O, Tensor S)> Fused(FusedComba.Arithmetic arithmetic) =>
        x => FusedComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, x.Scale, x.State, arithmetic: arithmetic);

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Fused_kernels_match_the_float64_reference_with_every_gradient(int batch, int kvHeads, int groups, int length, int dim, bool withState)
    {
        Gpu.Require();
        Assert.Null(FusedComba.UnsupportedReason(zeros(1, 1, 1, dim, device: CUDA), zeros(1, 1, 1, dim, device: CUDA), zeros(1, 1, 1, dim, device: CUDA)));
        using var scope = NewDisposeScope();
        var c = new CombaCase(batch, kvHeads, groups, length, dim, dim, 64, withState, Seed: length * 17 + dim + groups);
        using var source = CombaInputs.Random(c);
        // bf16-representable, so a bf16 output's gradient (which autograd keeps in bf16) is exactly the reference's
        var weightO = randn([c.Batch, c.Heads, c.Length, c.ValueDim], dtype: ScalarType.Float64).to(ScalarType.BFloat16).to(ScalarType.Float64);
        var weightS = randn([c.Batch, c.Heads, c.KeyDim, c.ValueDim], dtype: ScalarType.Float64);
        string[] names = ["q", "k", "v", "g", "beta", "lambda", "d", "initial state"];

        // bf16 through float32 arithmetic meets the 2e-3 bar; through the tensor cores (the default for bf16) the
        // operands' tf32 rounding adds about 1e-3 to the output's own 1.6e-3 of bf16 rounding (docs/kernels.md)
        foreach (var (dtype, arithmetic, tolerance) in new[]
                 {
                     (ScalarType.Float32, FusedComba.Arithmetic.Auto, 1e-5),
                     (ScalarType.BFloat16, FusedComba.Arithmetic.Float32, 2e-3),
                     (ScalarType.BFloat16, FusedComba.Arithmetic.TensorCores, 5e-3),
                     // bf16 operands throughout (q, k, v, W, M, Ũ and the chunk-start states rounded to bf16): the
                     // 1e-3…1e-2 band that bf16 tensor-core arithmetic lands in
                     (ScalarType.BFloat16, FusedComba.Arithmetic.Bf16, 1e-2),
                 }.Where(m => m.Item2 != FusedComba.Arithmetic.Bf16 || FusedComba.Bf16HeadDims.Contains(dim)))
        {
            using var inputs = source.To(dtype, CUDA);
            if (dtype == ScalarType.BFloat16)
            {
                // bf16 activations, float32 gates and parameters, as in a mixed-precision model: a bf16 leaf keeps its
                // gradient in bf16, which alone is up to 1.95e-3 off for the few entries of λ and d
                inputs.G = source.G.to(ScalarType.Float32, CUDA);
                inputs.Beta = source.Beta.to(ScalarType.Float32, CUDA);
                inputs.Lambda = source.Lambda.to(ScalarType.Float32, CUDA);
                inputs.D = source.D.to(ScalarType.Float32, CUDA);
                inputs.State = source.State?.to(ScalarType.Float32, CUDA);
            }
            using var reference = inputs.To(ScalarType.Float64, CPU);   // the same (rounded) numbers
            (Tensor O, Tensor S, Tensor[] Grads) Run(CombaInputs x, Func<CombaInputs, (Tensor O, Tensor S)> op)
            {
                // fresh leaves that keep each input's own dtype (bf16 activations beside float32 gates)
                Tensor Leaf(Tensor t) => t.detach().clone();
                var leaves = new CombaInputs
                {
                    Q = Leaf(x.Q), K = Leaf(x.K), V = Leaf(x.V), G = Leaf(x.G), Beta = Leaf(x.Beta), Lambda = Leaf(x.Lambda), D = Leaf(x.D),
                    State = x.State is null ? null : Leaf(x.State), Scale = x.Scale,
                }.RequiringGrad();
                var (o, s) = op(leaves);
                ((o.to(ScalarType.Float64, CPU) * weightO).sum() + (s.to(ScalarType.Float64, CPU) * weightS).sum()).backward();
                return (o.detach(), s.detach(), leaves.All.Select(t => t.grad!.detach().to(ScalarType.Float64, CPU)).ToArray());
            }
            var expected = Run(reference, Naive);
            var actual = Run(inputs, Fused(arithmetic));
            Assert.Equal(dtype, actual.O.dtype);
            Assert.Equal(ScalarType.Float32, actual.S.dtype);
            TestContext.Current.TestOutputHelper?.WriteLine($"{dtype} {arithmetic} [{c}]: output {Compare.RelativeError(actual.O, expected.O):E2}, state {Compare.RelativeError(actual.S, expected.S):E2}, gradients ≤ {expected.Grads.Select((e, i) => Compare.RelativeError(actual.Grads[i], e)).Max():E2}");
            Compare.Close(actual.O, expected.O, tolerance, $"{dtype} {arithmetic} output [{c}]");
            Compare.Close(actual.S, expected.S, tolerance, $"{dtype} {arithmetic} final state [{c}]");
            for (int i = 0; i < expected.Grads.Length; i++)
                Compare.Close(actual.Grads[i], expected.Grads[i], tolerance, $"{dtype} {arithmetic} gradient of {names[i]} [{c}]");
        }
    }

    [Fact]
    public void Fused_kernels_agree_with_the_chunkwise_path_at_a_training_shape()
    {
        Gpu.Require();
        using var scope = NewDisposeScope();
        var c = new CombaCase(Batch: 2, KvHeads: 2, Groups: 4, Length: 1000, KeyDim: 64, ValueDim: 64, ChunkSize: 64, WithState: false, Seed: 11);
        using var x = CombaInputs.Random(c, dtype: ScalarType.Float32, device: CUDA);
        var (o1, s1) = Fused(x);
        var (o2, s2) = ChunkwiseComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, x.Scale, x.State, 64);
        Compare.Close(o1, o2, 1e-5, "fused vs chunkwise output");
        Compare.Close(s1, s2, 1e-5, "fused vs chunkwise state");
    }

    [Fact]
    public void Without_CUDA_the_fused_op_is_the_chunkwise_op()
    {
        using var scope = NewDisposeScope();
        var c = new CombaCase(Batch: 1, KvHeads: 2, Groups: 2, Length: 70, KeyDim: 16, ValueDim: 16, ChunkSize: 64, WithState: true, Seed: 12);
        using var x = CombaInputs.Random(c, dtype: ScalarType.Float32);
        var (o1, s1) = Fused(x);
        var (o2, s2) = ChunkwiseComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, x.Scale, x.State, 64);
        Assert.True(o1.equal(o2).all().item<bool>());
        Assert.True(s1.equal(s2).all().item<bool>());
    }

    [Fact]
    public void Unsupported_calls_say_why_in_one_line()
    {
        Tensor T(params long[] shape) => zeros(shape);
        Assert.Contains("not a CUDA device", FusedComba.UnsupportedReason(T(1, 1, 4, 64), T(1, 1, 4, 64), T(1, 1, 4, 64)));
        if (!cuda.is_available()) return;
        Tensor G(ScalarType dtype, params long[] shape) => zeros(shape, dtype: dtype, device: CUDA);
        Assert.Contains("value dim", FusedComba.UnsupportedReason(G(ScalarType.Float32, 1, 1, 4, 64), G(ScalarType.Float32, 1, 1, 4, 64), G(ScalarType.Float32, 1, 1, 4, 128)));
        Assert.Contains("head dim 32", FusedComba.UnsupportedReason(G(ScalarType.Float32, 1, 1, 4, 32), G(ScalarType.Float32, 1, 1, 4, 32), G(ScalarType.Float32, 1, 1, 4, 32)));
        Assert.Contains("chunk size 32", FusedComba.UnsupportedReason(G(ScalarType.Float32, 1, 1, 4, 64), G(ScalarType.Float32, 1, 1, 4, 64), G(ScalarType.Float32, 1, 1, 4, 64), 32));
        Assert.Contains("float64", FusedComba.UnsupportedReason(G(ScalarType.Float64, 1, 1, 4, 64), G(ScalarType.Float64, 1, 1, 4, 64), G(ScalarType.Float64, 1, 1, 4, 64)));
    }
    /// <summary>
    /// The bf16 kernels reading q and k through their strides from the projections' (B, T, H, D) layout and rotating
    /// them in registers, against rotary applied in float64 before the float64 reference: output, state and every
    /// gradient (q's and k's back in that layout), to the bf16 path's 1e-2.
    /// </summary>
    [Theory]
    [InlineData(2, 2, 2, 150, 64, true)]
    [InlineData(1, 1, 4, 97, 128, false)]
    public void Bf16_kernels_rotate_q_and_k_read_in_the_projection_layout(int batch, int kvHeads, int groups, int length, int dim, bool withState)
    {
        Gpu.Require();
        using var scope = NewDisposeScope();
        var c = new CombaCase(batch, kvHeads, groups, length, dim, dim, 64, withState, Seed: 5 * length + dim);
        using var source = CombaInputs.Random(c);
        // tables for positions 5 … 5 + T − 1 (not a sequence start), rounded to bf16 as a bf16 model's are
        var (cos, sin) = new RotaryEmbedding(dim, 10000).CosSin(5, length, ScalarType.BFloat16, CPU);
        var weightO = randn([c.Batch, c.Heads, c.Length, c.ValueDim], dtype: ScalarType.Float64).to(ScalarType.BFloat16).to(ScalarType.Float64);
        var weightS = randn([c.Batch, c.Heads, c.KeyDim, c.ValueDim], dtype: ScalarType.Float64);

        // q and k as (B, T, H, D) leaves, handed to the op as (B, H, T, D) views; v, gates and state as the model has them
        (Tensor O, Tensor S, Tensor[] Grads) Run(ScalarType activations, Device device, bool fused)
        {
            Tensor Leaf(Tensor t, ScalarType type) => t.to(type, device).detach().clone().requires_grad_(true);
            var bf = ScalarType.BFloat16;
            var gates = activations == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
            // the same bf16-rounded numbers on both sides
            Tensor Rounded(Tensor t) => t.to(bf).to(ScalarType.Float64);
            var q = Leaf(Rounded(source.Q).transpose(1, 2).contiguous(), activations);
            var k = Leaf(Rounded(source.K).transpose(1, 2).contiguous(), activations);
            var v = Leaf(Rounded(source.V), activations);
            var g = Leaf(source.G, gates);
            var beta = Leaf(source.Beta, gates);
            var lambda = Leaf(source.Lambda, gates);
            var d = Leaf(source.D, gates);
            var state = source.State is null ? null : Leaf(source.State, gates);
            var tables = (cos.to(activations, device), sin.to(activations, device));
            var (o, s) = fused
                ? FusedComba.Forward(q.transpose(1, 2), k.transpose(1, 2), v, g, beta, lambda, d, source.Scale, state, arithmetic: FusedComba.Arithmetic.Bf16, rotary: tables)
                : NaiveComba.Forward(Rotary.Apply(q.transpose(1, 2), tables.Item1, tables.Item2), Rotary.Apply(k.transpose(1, 2), tables.Item1, tables.Item2),
                    v, g, beta, lambda, d, source.Scale, state);
            ((o.to(ScalarType.Float64, CPU) * weightO).sum() + (s.to(ScalarType.Float64, CPU) * weightS).sum()).backward();
            Tensor[] leaves = state is null ? [q, k, v, g, beta, lambda, d] : [q, k, v, g, beta, lambda, d, state];
            return (o.detach().to(ScalarType.Float64, CPU), s.detach().to(ScalarType.Float64, CPU), leaves.Select(t => t.grad!.detach().to(ScalarType.Float64, CPU)).ToArray());
        }
        var expected = Run(ScalarType.Float64, CPU, fused: false);
        var actual = Run(ScalarType.BFloat16, CUDA, fused: true);
        string[] names = ["q", "k", "v", "g", "beta", "lambda", "d", "initial state"];
        Compare.Close(actual.O, expected.O, 1e-2, $"rotated bf16 output [{c}]");
        Compare.Close(actual.S, expected.S, 1e-2, $"rotated bf16 final state [{c}]");
        for (int i = 0; i < expected.Grads.Length; i++)
            Compare.Close(actual.Grads[i], expected.Grads[i], 1e-2, $"rotated bf16 gradient of {names[i]} [{c}]");
    }

    [Fact]
    public void Rotary_tables_pass_through_the_chunkwise_path_and_wrong_shapes_are_refused()
    {
        using var scope = NewDisposeScope();
        var c = new CombaCase(Batch: 1, KvHeads: 2, Groups: 2, Length: 70, KeyDim: 16, ValueDim: 16, ChunkSize: 64, WithState: false, Seed: 13);
        using var x = CombaInputs.Random(c, dtype: ScalarType.Float32);
        var (cos, sin) = new RotaryEmbedding(16, 10000).CosSin(3, 70, ScalarType.Float32, CPU);
        var (o1, _) = FusedComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, x.Scale, rotary: (cos, sin));
        var (q, k) = (RotaryEmbedding.Apply(x.Q, cos, sin), RotaryEmbedding.Apply(x.K, cos, sin));
        var (o2, _) = ChunkwiseComba.Forward(q, k, x.V, x.G, x.Beta, x.Lambda, x.D, x.Scale, null, 64);
        Assert.True(o1.equal(o2).all().item<bool>());
        var error = Assert.Throws<ArgumentException>(() => FusedComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, x.Scale, rotary: (cos.narrow(0, 0, 69), sin)));
        Assert.Contains("(70, 16)", error.Message);
    }
}
