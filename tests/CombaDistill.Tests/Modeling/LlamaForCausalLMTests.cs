using CombaDistill.Modeling;
using CombaDistill.Modeling.Llama;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Modeling;

public class LlamaForCausalLMTests
{
    public static TheoryData<string> Architectures => ["llama3-gqa", "qwen2-tied", "linear-bias", "mistral-window"];

    static LlamaConfig Architecture(string name) => name switch
    {
        "llama3-gqa" => TinyModels.Llama3Gqa,
        "qwen2-tied" => TinyModels.Qwen2Tied,
        "linear-bias" => TinyModels.LinearRopeWithBias,
        "mistral-window" => TinyModels.MistralWindow,
        _ => throw new ArgumentException(name),
    };

    static double MaxAbsDiff(Tensor a, Tensor b) => (a.to(ScalarType.Float64) - b.to(ScalarType.Float64)).abs().max().item<double>();

    /// <summary>Float32 agreement: <paramref name="tolerance"/> relative to the logit scale (logits here reach ~20, where one float32 ulp is 2e-6).</summary>
    internal static void AssertClose(Tensor actual, Tensor expected, double tolerance)
    {
        var scale = Math.Max(1, expected.to(ScalarType.Float64).abs().max().item<double>());
        Assert.InRange(MaxAbsDiff(actual, expected), 0, tolerance * scale);
    }

    [Theory]
    [MemberData(nameof(Architectures))]
    public void Forward_matches_an_independent_float64_computation(string architecture)
    {
        using var scope = NewDisposeScope();
        var c = Architecture(architecture);
        var weights = TinyModels.RandomWeights(c, seed: 7);
        using var model = TinyModels.Build(c, weights);
        var ids = new[] { TinyModels.RandomIds(c, 19, seed: 1), TinyModels.RandomIds(c, 19, seed: 2) };
        using var _ = no_grad();
        var logits = model.forward(tensor(ids.SelectMany(x => x).ToArray(), [2, 19]));
        Assert.Equal(ScalarType.Float32, logits.dtype);
        Assert.Equal(new long[] { 2, 19, c.VocabSize }, logits.shape);
        for (var b = 0; b < 2; b++)
        {
            var expected = LlamaReference.Logits(c, weights, ids[b]);
            Assert.True(expected.abs().max().item<double>() > 1, "logits should not be trivially small");
            AssertClose(logits[b], expected, 1e-5);
        }
    }

    [Theory]
    [MemberData(nameof(Architectures))]
    public void State_dict_has_exactly_the_Hugging_Face_keys_and_shapes(string architecture)
    {
        var c = Architecture(architecture);
        var weights = TinyModels.RandomWeights(c, seed: 3);
        using var model = new LlamaForCausalLM(c);
        var state = model.state_dict();
        Assert.Equal(weights.Keys.Order(), state.Keys.Order());
        foreach (var (name, t) in weights) Assert.Equal(t.shape, state[name].shape);
    }

    [Theory]
    [MemberData(nameof(Architectures))]
    public void Decoding_with_the_cache_equals_the_full_forward(string architecture)
    {
        using var scope = NewDisposeScope();
        var c = Architecture(architecture);
        using var model = TinyModels.Build(c, TinyModels.RandomWeights(c, seed: 11));
        var ids = TinyModels.RandomIds(c, 23, seed: 5);
        using var _ = no_grad();
        var full = model.forward(tensor(ids, [1, ids.Length]));

        // one token at a time
        using (var cache = (KvCache)model.NewState(1))
        {
            var steps = ids.Select((id, t) => model.forward(tensor(new[] { id }, [1, 1]), cache)).ToArray();
            Assert.Equal(ids.Length, cache.Length);
            AssertClose(cat(steps, 1), full, 1e-5);
        }

        // a prompt, then chunks longer than one token (queries see the cached prefix through an offset causal mask)
        using (var cache = (KvCache)model.NewState(1))
        {
            int[] cuts = [0, 7, 8, 15, 23];
            var chunks = cuts.Zip(cuts.Skip(1)).Select(r => model.forward(tensor(ids[r.First..r.Second], [1, r.Second - r.First]), cache)).ToArray();
            AssertClose(cat(chunks, 1), full, 1e-5);
        }
    }

    [Fact]
    public void The_sliding_window_changes_only_positions_past_the_window()
    {
        using var scope = NewDisposeScope();
        var c = TinyModels.MistralWindow;
        var weights = TinyModels.RandomWeights(c, seed: 17);
        using var windowed = TinyModels.Build(c, weights);
        using var full = TinyModels.Build(c with { SlidingWindow = null }, weights);
        var ids = tensor(TinyModels.RandomIds(c, 16, seed: 3), [1, 16]);
        using var _ = no_grad();
        var a = windowed.forward(ids);
        var b = full.forward(ids);
        // Positions 0..4 see at most 5 positions either way; from position 5 on the window drops the oldest.
        AssertClose(a[0, ..5], b[0, ..5], 1e-6);
        Assert.True(MaxAbsDiff(a[0, 5..], b[0, 5..]) > 1e-2);
        Assert.Equal([[true, false, false], [true, true, false], [false, true, true]], ToRows(LlamaAttention.Mask(3, 3, 2, CPU)));
        Assert.Equal([[false, false, true, true, false], [false, false, false, true, true]], ToRows(LlamaAttention.Mask(2, 5, 2, CPU)));
    }

    static bool[][] ToRows(Tensor mask) =>
        Enumerable.Range(0, (int)mask.shape[0]).Select(r => mask[r].data<bool>().ToArray()).ToArray();

    [Fact]
    public void The_cache_grows_past_its_initial_capacity_without_losing_history()
    {
        using var scope = NewDisposeScope();
        var c = TinyModels.Llama3Gqa with { MaxPositionEmbeddings = 1024 };
        using var model = TinyModels.Build(c, TinyModels.RandomWeights(c, seed: 4));
        var ids = TinyModels.RandomIds(c, 300, seed: 9);
        using var _ = no_grad();
        var full = model.forward(tensor(ids, [1, 300]));
        using var cache = (KvCache)model.NewState(1);
        var first = model.forward(tensor(ids[..250], [1, 250]), cache);
        var rest = Enumerable.Range(250, 50).Select(t => model.forward(tensor(new[] { ids[t] }, [1, 1]), cache)).ToArray();
        AssertClose(cat([first, .. rest], 1), full, 1e-5);
    }

    [Theory]
    [MemberData(nameof(Architectures))]
    public void Bfloat16_stays_close_to_float32(string architecture)
    {
        using var scope = NewDisposeScope();
        var c = Architecture(architecture);
        // Round the weights to bf16 first, so the comparison measures only bf16 arithmetic, not weight rounding.
        var weights = TinyModels.RandomWeights(c, seed: 21).ToDictionary(kv => kv.Key, kv => kv.Value.to(ScalarType.BFloat16).to(ScalarType.Float32));
        using var f32 = TinyModels.Build(c, weights);
        using var bf16 = TinyModels.Build(c, weights, ScalarType.BFloat16);
        Assert.All(bf16.parameters(), p => Assert.Equal(ScalarType.BFloat16, p.dtype));
        var ids = tensor(TinyModels.RandomIds(c, 17, seed: 3), [1, 17]);
        using var _ = no_grad();
        var exact = f32.forward(ids);
        var approx = bf16.forward(ids);
        Assert.Equal(ScalarType.Float32, approx.dtype);
        // bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.002). A logit passes through
        // roughly a dozen rounded stages (projections, rotary, attention, residual adds, norms, MLP,
        // head), so errors of a few 2^-9 relative to the logit scale are expected (measured here:
        // 0.5–0.75% of the largest logit); 3% leaves margin while still catching any real bug, which
        // gives O(1) relative errors.
        var scale = (double)exact.abs().max().item<float>();
        var maxError = MaxAbsDiff(approx, exact);
        Assert.InRange(maxError, 0, 0.03 * scale);
        // ...and the typical error is far smaller than that bound
        Assert.InRange((approx - exact).abs().mean().item<float>(), 0, 0.005 * scale);
    }

    [Fact]
    public void Layer_inputs_are_the_residual_stream_entering_each_layer()
    {
        using var scope = NewDisposeScope();
        var c = TinyModels.Llama3Gqa;
        var weights = TinyModels.RandomWeights(c, seed: 5);
        using var model = TinyModels.Build(c, weights);
        var ids = tensor(TinyModels.RandomIds(c, 9, seed: 4), [1, 9]);
        using var _ = no_grad();
        var inputs = new List<Tensor>();
        var final = model.model.forward(ids, layerInputs: inputs);
        Assert.Equal(c.NumHiddenLayers, inputs.Count);
        Assert.True(inputs[0].equal(weights["model.embed_tokens.weight"].index_select(0, ids[0]).unsqueeze(0)).all().item<bool>());
        // running the last layer on its recorded input, then the final norm, gives the model's output
        var rotary = model.model.Rotary.CosSin(0, 9, ScalarType.Float32, CPU);
        var rerun = model.model.norm.forward(model.model.layers[^1].forward(inputs[^1], rotary.cos, rotary.sin));
        AssertClose(rerun, final, 1e-6);
    }

    [Fact]
    public void Builds_on_the_meta_device_with_Llama_3_8B_shapes()
    {
        var c = new LlamaConfig
        {
            VocabSize = 128256, HiddenSize = 4096, IntermediateSize = 14336, NumHiddenLayers = 32, NumAttentionHeads = 32,
            NumKeyValueHeads = 8, HeadDim = 128, MaxPositionEmbeddings = 131072, RopeTheta = 500000,
            RopeScaling = new RopeScaling("llama3", 8, 1, 4, 8192),
        };
        using var model = new LlamaForCausalLM(c, ScalarType.BFloat16, META);
        var state = model.state_dict();
        Assert.All(state.Values, t => Assert.True(t.is_meta));
        Assert.Equal(32 * 9 + 3, state.Count);
        Assert.Equal(new long[] { 1024, 4096 }, state["model.layers.31.self_attn.k_proj.weight"].shape);
        Assert.Equal(new long[] { 14336, 4096 }, state["model.layers.0.mlp.up_proj.weight"].shape);
        Assert.Equal(8_030_261_248L, state.Values.Sum(t => t.numel()));
    }
}
