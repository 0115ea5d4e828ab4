using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Ops;

/// <summary>
/// The chunkwise-parallel Comba form (docs/architecture.md) as a handful of large batched ops over
/// (batch, KV head, query group, chunk). Within a chunk of C tokens, γ is the inclusive cumulative sum of g,
/// γ⁰ the exclusive one, and h = Sᵀ the state at the chunk start:
/// <code>
///   A  = strictly-lower( diag(β) λ K̂K̂ᵀ ⊙ exp(γ⁰_i − γ_j) )        M = (I + A)⁻¹,  U = M diag(β) V,  W = M diag(β e^{γ⁰}) λ K̂
///   Ũ  = U − W h,    h ← e^{γ_C} h + (K̂ ⊙ e^{γ_C − γ})ᵀ Ũ              (the only loop: over chunks)
///   O  = s [ e^{γ} ⊙ (Q̃ h) + ((Q̃ K̂ᵀ) ⊙ e^{γ_i − γ_j} ⊙ causal) Ũ ],  Q̃ = Q̂ − d K̂   (all chunks at once)
/// </code>
/// Derivation: unrolling u_t = β_t (v_t − λ S_{t−1} k̂_t) with S_{t−1} = e^{γ⁰_t} S₀ + Σ_{j&lt;t} e^{γ⁰_t − γ_j} u_j k̂_jᵀ
/// gives (I + A) Ũ = diag(β) V − diag(β e^{γ⁰}) λ K̂ h, a unit lower-triangular system: one triangular inverse per
/// chunk, shared by both right-hand sides.
///
/// GQA without copies of k/v: query heads are grouped as (B, Hkv, G, …) and k/v carry a broadcast group axis of 1,
/// so K̂K̂ᵀ is computed once per KV head; everything that involves β, g, λ, d or q is per query head.
/// Sequences are padded to whole chunks with g = 0, β = 0, k = v = q = 0, which leaves the state untouched.
/// Precision: float64 inputs run in float64; everything else runs in float32 (bf16 inputs are upcast once), the
/// output is returned in q's dtype and the state in the compute precision.
/// </summary>
public static class ChunkwiseComba
{
    public static readonly int[] SupportedChunkSizes = [16, 32, 64, 128];

    /// <summary>Layout: see <see cref="CombaShape"/>; any T ≥ 1.</summary>
    /// <returns>o (B, H, T, Dv) in q's dtype and the final state h = Sᵀ (B, H, Dk, Dv).</returns>
    public static (Tensor Output, Tensor FinalState) Forward(
        Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor lambda, Tensor d, double scale,
        Tensor? initialState = null, int chunkSize = 64)
    {
        var shape = CombaShape.OfSequence(q, k, v, g, beta, lambda, d, initialState);
        if (!SupportedChunkSizes.Contains(chunkSize))
            throw new ArgumentException($"Comba: chunk size {chunkSize} is not supported; use one of {string.Join(", ", SupportedChunkSizes)}");
        using var scope = NewDisposeScope();
        var dtype = CombaMath.ComputeType(q);
        var device = q.device;
        long C = chunkSize, T = shape.Length, N = (T + C - 1) / C;
        var (B, H, Hkv, G, Dk, Dv) = (shape.Batch, shape.Heads, shape.KvHeads, shape.Groups, shape.KeyDim, shape.ValueDim);

        // (B, heads, T, D) → (B, Hkv, heads/Hkv, N, C, D), zero-padded to N·C tokens
        Tensor Chunked(Tensor x) =>
            nn.functional.pad(x, [0, 0, 0, N * C - T]).reshape(B, Hkv, x.shape[1] / Hkv, N, C, x.shape[3]);
        var Q = Chunked(CombaMath.L2Normalize(q.to(dtype)));             // (B, Hkv, G, N, C, Dk)
        var K = Chunked(CombaMath.L2Normalize(k.to(dtype)));             // (B, Hkv, 1, N, C, Dk)
        var V = Chunked(v.to(dtype));                                    // (B, Hkv, 1, N, C, Dv)
        var logDecay = Chunked(g.to(dtype).unsqueeze(-1));               // (B, Hkv, G, N, C, 1)
        var b = Chunked(beta.to(dtype).unsqueeze(-1));                   // (B, Hkv, G, N, C, 1)
        var lam = lambda.to(dtype).view(1, Hkv, G, 1, 1, 1);
        var dCorr = d.to(dtype).view(1, Hkv, G, 1, 1, 1);

        var gamma = logDecay.cumsum(-2);
        // γ⁰ as the shifted inclusive sum (not γ − g), so that γ⁰_i − γ_{i−1} is exactly 0 even when γ is large.
        var gamma0 = nn.functional.pad(gamma.narrow(-2, 0, C - 1), [0, 0, 1, 0]);
        var gammaEnd = gamma.narrow(-2, C - 1, 1);                       // (…, 1, 1)
        var strictlyLower = ones(C, C, ScalarType.Bool, device).tril(-1);
        var causal = ones(C, C, ScalarType.Bool, device).tril();
        // exp(row_i − col_j) where the mask holds, else 0; masked before exp so no inf reaches a product.
        Tensor Decay(Tensor rows, Tensor cols, Tensor mask) =>
            (rows - cols.transpose(-1, -2)).masked_fill(mask.logical_not(), double.NegativeInfinity).exp();

        var A = b * lam * K.matmul(K.transpose(-1, -2)) * Decay(gamma0, gamma, strictlyLower);   // (B, Hkv, G, N, C, C)
        // The one triangular inverse per chunk, M = (I + A)⁻¹, then plain matmuls: on the GPU this is 2–3× faster,
        // forward and backward, than solving for the Dv + Dk right-hand sides directly.
        var M = linalg.solve_triangular(A, eye(C, dtype: dtype, device: device), upper: false, left: true, unitriangular: true);
        var U = M.matmul(b * V);                                         // M diag(β) V            (B, Hkv, G, N, C, Dv)
        var W = M.matmul(b * gamma0.exp() * lam * K);                    // M diag(β e^{γ⁰}) λ K̂   (B, Hkv, G, N, C, Dk)

        // The only sequential part, the state at each chunk start. K̃ = K̂ ⊙ e^{γ_C − γ}.
        var keysToEnd = (K * (gammaEnd - gamma).exp()).transpose(-1, -2);  // (B, Hkv, G, N, Dk, C)
        Tensor ChunkMajor(Tensor t) => t.reshape(B * H, N, t.shape[^2], t.shape[^1]).transpose(0, 1).contiguous();   // (N, B·H, ·, ·)
        var h = initialState is null ? zeros([B * H, Dk, Dv], dtype: dtype, device: device) : initialState.to(dtype).reshape(B * H, Dk, Dv);
        var starts = new Tensor[N];
        Tensor? Ut = null;                                                // Ũ, where the loop makes it
        if (device.type == DeviceType.CUDA)
        {
            // h ← P h + X with P = e^{γ_C} I − K̃ᵀW and X = K̃ᵀU built for all chunks at once: each step is one batched
            // matmul and an add, which is what a GPU wants from a loop of small launches.
            var P = gammaEnd.exp() * eye(Dk, dtype: dtype, device: device) - keysToEnd.matmul(W);
            var X = keysToEnd.matmul(U);
            var (steps, inputs) = (ChunkMajor(P), ChunkMajor(X));
            for (long n = 0; n < N; n++)
            {
                starts[n] = h;
                h = inputs[n] + steps[n].bmm(h);    // not baddbmm: TorchSharp 0.107 hands its operands to libtorch in the wrong order
            }
        }
        else
        {
            // Ũ = U − W h and h ← e^{γ_C} h + K̃ᵀŨ chunk by chunk: the Dk × Dk transition P is never formed. On a CPU,
            // forming it cost more than the rest of the forward (Taylor features make Dk large and Dv small).
            var (keys, ws, us) = (ChunkMajor(keysToEnd), ChunkMajor(W), ChunkMajor(U));
            var decays = ChunkMajor(gammaEnd.exp());                      // (N, B·H, 1, 1)
            var corrected = new Tensor[N];
            for (long n = 0; n < N; n++)
            {
                starts[n] = h;
                corrected[n] = us[n] - ws[n].bmm(h);
                h = decays[n] * h + keys[n].bmm(corrected[n]);
            }
            Ut = stack(corrected, dim: 1).view(B, Hkv, G, N, C, Dv);
        }
        var H0 = stack(starts, dim: 1).view(B, Hkv, G, N, Dk, Dv);
        Ut ??= U - W.matmul(H0);                                          // the GPU form: Ũ for all chunks at once

        var readout = Q - dCorr * K;                                      // Q̃
        var inter = gamma.exp() * readout.matmul(H0);
        var intra = (readout.matmul(K.transpose(-1, -2)) * Decay(gamma, gamma, causal)).matmul(Ut);
        var o = (scale * (inter + intra)).view(B, H, N * C, Dv).narrow(2, 0, T).to(q.dtype);
        return (o.MoveToOuterDisposeScope(), h.view(B, H, Dk, Dv).MoveToOuterDisposeScope());
    }
}
