using CombaDistill.Modeling.Llama;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Modeling;

/// <summary>
/// An independent, deliberately plain Llama forward in float64 for one sequence, written from the
/// equations rather than from the library: explicit per-pair rotary angles, explicit masked softmax
/// per head, nothing shared with the model code. The tests hold the library to it.
/// </summary>
static class LlamaReference
{
    public static Tensor Logits(LlamaConfig c, IReadOnlyDictionary<string, Tensor> weights, long[] ids)
    {
        using var scope = NewDisposeScope();
        Tensor W(string name) => weights[name].to(ScalarType.Float64);
        var length = ids.Length;
        var h = W("model.embed_tokens.weight").index_select(0, tensor(ids));
        var inverse = InverseFrequencies(c);
        for (var l = 0; l < c.NumHiddenLayers; l++)
        {
            var p = $"model.layers.{l}.";
            var x = Rms(h, W(p + "input_layernorm.weight"), c.RmsNormEps);
            var q = Project(x, weights, p + "self_attn.q_proj").view(length, c.NumAttentionHeads, c.HeadDim);
            var k = Project(x, weights, p + "self_attn.k_proj").view(length, c.NumKeyValueHeads, c.HeadDim);
            var v = Project(x, weights, p + "self_attn.v_proj").view(length, c.NumKeyValueHeads, c.HeadDim);
            q = Rotate(q, inverse);
            k = Rotate(k, inverse);
            var heads = new List<Tensor>();
            for (var head = 0; head < c.NumAttentionHeads; head++)
            {
                var kvHead = head / (c.NumAttentionHeads / c.NumKeyValueHeads);
                var scores = q[.., head, ..].matmul(k[.., kvHead, ..].t()) / Math.Sqrt(c.HeadDim);
                var future = ones(length, length, ScalarType.Bool).triu(1);
                // Mistral's window: position i sees i - W + 1 … i.
                if (c.SlidingWindow is { } window) future = future.logical_or(ones(length, length, ScalarType.Bool).tril(-window));
                scores = scores.masked_fill(future, double.NegativeInfinity);
                var e = (scores - scores.amax([-1], keepdim: true)).exp();
                heads.Add((e / e.sum(-1, keepdim: true)).matmul(v[.., kvHead, ..]));
            }
            h = h + Project(cat(heads, 1), weights, p + "self_attn.o_proj");
            x = Rms(h, W(p + "post_attention_layernorm.weight"), c.RmsNormEps);
            var gate = Project(x, weights, p + "mlp.gate_proj");
            h = h + Project(gate / (1 + (-gate).exp()) * Project(x, weights, p + "mlp.up_proj"), weights, p + "mlp.down_proj");
        }
        h = Rms(h, W("model.norm.weight"), c.RmsNormEps);
        var head_ = weights.ContainsKey("lm_head.weight") ? W("lm_head.weight") : W("model.embed_tokens.weight");
        return h.matmul(head_.t()).MoveToOuterDisposeScope();
    }

    static Tensor Project(Tensor x, IReadOnlyDictionary<string, Tensor> w, string name)
    {
        var y = x.matmul(w[name + ".weight"].to(ScalarType.Float64).t());
        return w.TryGetValue(name + ".bias", out var b) ? y + b.to(ScalarType.Float64) : y;
    }

    static Tensor Rms(Tensor x, Tensor weight, double eps) => x / (x.square().mean([-1], keepdim: true) + eps).sqrt() * weight;

    /// <summary>HF layout: dimension i is paired with i + D/2 and both turn by position·inv[i].</summary>
    static Tensor Rotate(Tensor x, double[] inverse)
    {
        var (length, heads, dim) = (x.shape[0], x.shape[1], x.shape[2]);
        var half = dim / 2;
        var data = x.contiguous().data<double>().ToArray();
        var result = new double[data.Length];
        for (var t = 0; t < length; t++)
        for (var hh = 0; hh < heads; hh++)
        for (var i = 0; i < half; i++)
        {
            var angle = t * inverse[i];
            var at = (t * heads + hh) * dim;
            var (a, b) = (data[at + i], data[at + i + half]);
            result[at + i] = a * Math.Cos(angle) - b * Math.Sin(angle);
            result[at + i + half] = b * Math.Cos(angle) + a * Math.Sin(angle);
        }
        return tensor(result, [length, heads, dim]);
    }

    /// <summary>Rotary frequencies written out from the published rules (default, linear, Llama 3.1).</summary>
    public static double[] InverseFrequencies(LlamaConfig c)
    {
        var result = new double[c.HeadDim / 2];
        for (var i = 0; i < result.Length; i++)
        {
            var f = Math.Pow(c.RopeTheta, -2.0 * i / c.HeadDim);
            if (c.RopeScaling is { Type: "linear" } linear) f /= linear.Factor;
            if (c.RopeScaling is { Type: "llama3" } s)
            {
                var ratio = s.OriginalMaxPositionEmbeddings * f / (2 * Math.PI);   // original context / wavelength
                if (ratio < s.LowFreqFactor) f /= s.Factor;
                else if (ratio <= s.HighFreqFactor)
                {
                    var w = (ratio - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                    f = w * f + (1 - w) * f / s.Factor;
                }
            }
            result[i] = f;
        }
        return result;
    }
}
