using System.Buffers.Binary;

namespace CombaDistill.Tests.Conversion;

/// <summary>
/// llama2.c's run.c forward, re-written in plain double arithmetic from SOURCE.md's description and
/// reading the raw .bin weights in their own layout: adjacent-pair rotary, per-position KV cache,
/// K/V head h / (n_heads / n_kv_heads). It shares nothing with the importer or the model.
/// </summary>
static class Llama2cRunReference
{
    public static double[][] Logits(string binPath, IReadOnlyList<int> tokens)
    {
        var bytes = File.ReadAllBytes(binPath);
        int H(int i) => BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(4 * i));
        int dim = H(0), hidden = H(1), layers = H(2), heads = H(3), kvHeads = H(4), seqLen = H(6);
        var shared = H(5) > 0;
        var vocab = Math.Abs(H(5));
        var headSize = dim / heads;
        var kvDim = kvHeads * headSize;
        var kvMul = heads / kvHeads;
        var f = new float[(bytes.Length - 28) / 4];
        Buffer.BlockCopy(bytes, 28, f, 0, f.Length * 4);

        var next = 0;
        int Take(int n) { var at = next; next += n; return at; }
        int emb = Take(vocab * dim), rmsAtt = Take(layers * dim), wq = Take(layers * dim * dim), wk = Take(layers * dim * kvDim),
            wv = Take(layers * dim * kvDim), wo = Take(layers * dim * dim), rmsFfn = Take(layers * dim), w1 = Take(layers * dim * hidden),
            w2 = Take(layers * hidden * dim), w3 = Take(layers * dim * hidden), rmsFinal = Take(dim);
        Take(seqLen * headSize / 2);
        Take(seqLen * headSize / 2);
        var wcls = shared ? emb : Take(vocab * dim);
        if (next != f.Length) throw new InvalidOperationException("layout does not cover the file");

        double[] MatVec(double[] x, int w, int n, int d)   // W (d, n) row-major, y[i] = Σ_j W[i*n + j] x[j]
        {
            var y = new double[d];
            for (var i = 0; i < d; i++)
            {
                double s = 0;
                for (var j = 0; j < n; j++) s += f[w + i * n + j] * x[j];
                y[i] = s;
            }
            return y;
        }
        double[] RmsNorm(double[] x, int w)
        {
            var ss = x.Sum(v => v * v) / x.Length + 1e-5;
            return x.Select((v, i) => v / Math.Sqrt(ss) * f[w + i]).ToArray();
        }

        var keyCache = new double[layers, tokens.Count, kvDim];
        var valueCache = new double[layers, tokens.Count, kvDim];
        var result = new double[tokens.Count][];
        for (var pos = 0; pos < tokens.Count; pos++)
        {
            var x = Enumerable.Range(0, dim).Select(i => (double)f[emb + tokens[pos] * dim + i]).ToArray();
            for (var l = 0; l < layers; l++)
            {
                var xb = RmsNorm(x, rmsAtt + l * dim);
                var q = MatVec(xb, wq + l * dim * dim, dim, dim);
                var k = MatVec(xb, wk + l * dim * kvDim, dim, kvDim);
                var v = MatVec(xb, wv + l * dim * kvDim, dim, kvDim);
                for (var i = 0; i < dim; i += 2)
                {
                    var angle = pos / Math.Pow(10000, (i % headSize) / (double)headSize);
                    var (c, s) = (Math.Cos(angle), Math.Sin(angle));
                    (q[i], q[i + 1]) = (q[i] * c - q[i + 1] * s, q[i] * s + q[i + 1] * c);
                    if (i < kvDim) (k[i], k[i + 1]) = (k[i] * c - k[i + 1] * s, k[i] * s + k[i + 1] * c);
                }
                for (var i = 0; i < kvDim; i++) (keyCache[l, pos, i], valueCache[l, pos, i]) = (k[i], v[i]);

                var attended = new double[dim];
                for (var h = 0; h < heads; h++)
                {
                    var kvOffset = h / kvMul * headSize;
                    var scores = new double[pos + 1];
                    for (var t = 0; t <= pos; t++)
                    {
                        double dot = 0;
                        for (var i = 0; i < headSize; i++) dot += q[h * headSize + i] * keyCache[l, t, kvOffset + i];
                        scores[t] = dot / Math.Sqrt(headSize);
                    }
                    var max = scores.Max();
                    var e = scores.Select(sc => Math.Exp(sc - max)).ToArray();
                    var sum = e.Sum();
                    for (var t = 0; t <= pos; t++)
                        for (var i = 0; i < headSize; i++) attended[h * headSize + i] += e[t] / sum * valueCache[l, t, kvOffset + i];
                }
                var o = MatVec(attended, wo + l * dim * dim, dim, dim);
                for (var i = 0; i < dim; i++) x[i] += o[i];

                xb = RmsNorm(x, rmsFfn + l * dim);
                var gate = MatVec(xb, w1 + l * dim * hidden, dim, hidden);
                var up = MatVec(xb, w3 + l * dim * hidden, dim, hidden);
                var act = gate.Select((g, i) => g / (1 + Math.Exp(-g)) * up[i]).ToArray();
                var down = MatVec(act, w2 + l * hidden * dim, hidden, dim);
                for (var i = 0; i < dim; i++) x[i] += down[i];
            }
            result[pos] = MatVec(RmsNorm(x, rmsFinal), wcls, dim, vocab);
        }
        return result;
    }
}
