// Fused chunkwise Comba, forward and backward (DESIGN.md, "Comba in one paragraph").
//
// Header-free on purpose: NVRTC from a pip PyTorch install has no CUDA headers, so bf16 values travel as raw
// 16-bit words and are widened/rounded here. Compiled at first use by Ops/FusedComba through Runtime/Cuda.
//
// The op these kernels implement, per query head, for chunks of C = 64 tokens (γ = inclusive cumsum of g inside
// the chunk, γ⁰ the exclusive one, h = Sᵀ the state at the chunk start, κ = βλ):
//   A = strictly-lower(diag(κ) K Kᵀ ⊙ e^{γ⁰_i − γ_j}),  M = (I + A)⁻¹
//   U = M diag(β) V,  W = M diag(κ e^{γ⁰}) K,  Ũ = U − W h,  h ← e^{γ_C} h + (K ⊙ e^{γ_C − γ})ᵀ Ũ
//   O = s [ e^{γ} ⊙ (Q h) + ((Q Kᵀ) ⊙ e^{γ_i − γ_j} ⊙ causal) Ũ ]
// where Q is already the corrected, normalised readout q̂ − d k̂ and K the normalised key (the C# side does the
// normalisation and the correction with ordinary ops, so autograd covers them).
//
// Launch order, forward:  prepare (all chunks) → state (sequential over chunks) → output (all chunks)
//              backward:  dupart (all chunks)  → dstate (sequential, reverse) → local (all chunks)
// Layouts: q (B,H,T,D), k and v (B,Hkv,T,D) in the input type X; g, β, κ (B,H,T) float; the saved per-chunk
// buffers W, U, Ũ, dŨ, … (B·H, N·C, D) float; chunk-start states H0 and their gradients (B·H, N, D, D) float,
// row k, column v. Tokens past T read as zeros with g = β = κ = 0, which leaves the state untouched.

#define CH 64
#define NT 256
#define BV 32

typedef unsigned short bf16_t;

__device__ __forceinline__ float ld(const float* p) { return *p; }
__device__ __forceinline__ float ld(const bf16_t* p) { return __uint_as_float(((unsigned)*p) << 16); }
__device__ __forceinline__ void st(float* p, float x) { *p = x; }
__device__ __forceinline__ void st(bf16_t* p, float x)
{
    unsigned u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) { *p = (bf16_t)0x7fc0; return; }   // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                          // round to nearest even
    *p = (bf16_t)(u >> 16);
}

// Σ_t a[t] b[t] over t < n for two contiguous rows, by the whole warp (lanes stride over t, so every load is
// coalesced); every lane returns the sum. For products whose contracted index runs along both operands' rows.
template <typename A, typename B>
__device__ __forceinline__ float warp_dot(const A* a, const B* b, int n)
{
    float s = 0.f;
    for (int t = threadIdx.x & 31; t < n; t += 32) s += ld(a + t) * ld(b + t);
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    return s;
}

struct Head
{
    int bh, b, hq, hk;
    __device__ Head(int bh_, int H, int Hkv) : bh(bh_), b(bh_ / H), hq(bh_ % H), hk((bh_ % H) / (H / Hkv)) {}
    __device__ size_t q(int T) const { return (size_t)bh * T; }                        // token row base, per query head
    __device__ size_t kv(int Hkv, int T) const { return ((size_t)b * Hkv + hk) * T; }  // token row base, per KV head
};

// rows t0 … t0+CH−1 of a (·, D) matrix into shared memory with row stride D+1 (no bank conflicts on column walks)
template <int D, typename X>
__device__ __forceinline__ void load_rows(float* s, const X* src, int t0, int T)
{
    for (int idx = threadIdx.x; idx < CH * D; idx += NT)
    {
        int i = idx / D, c = idx % D, t = t0 + i;
        s[i * (D + 1) + c] = t < T ? ld(src + (size_t)t * D + c) : 0.f;
    }
}

// g, β, κ of one chunk and the cumulative sums; γ⁰_i is γ_{i−1} exactly (same bits), so e^{γ⁰_i − γ_{i−1}} = 1.
struct Gates { float *gam, *gam0, *bet, *kap; };

__device__ Gates carve_gates(float* p) { return Gates{p, p + CH, p + 2 * CH, p + 3 * CH}; }

__device__ void load_gates(Gates G, const float* g, const float* beta, const float* kappa, int t0, int T)
{
    int i = threadIdx.x;
    if (i < CH)
    {
        int t = t0 + i;
        bool in = t < T;
        G.gam[i] = in ? g[t] : 0.f;
        G.bet[i] = in ? beta[t] : 0.f;
        G.kap[i] = in ? kappa[t] : 0.f;
    }
    __syncthreads();
    if (i < 32)
    {
        float a = G.gam[2 * i], b = G.gam[2 * i + 1];
        float s = a + b;
        for (int off = 1; off < 32; off <<= 1)
        {
            float y = __shfl_up_sync(0xffffffffu, s, off);
            if (i >= off) s += y;
        }
        float before = __shfl_up_sync(0xffffffffu, s, 1);
        if (i == 0) before = 0.f;
        float mid = before + a;
        G.gam0[2 * i] = before;
        G.gam[2 * i] = mid;
        G.gam0[2 * i + 1] = mid;
        G.gam[2 * i + 1] = s;
    }
    __syncthreads();
}

// A (strictly lower, row stride CH+1) and, if asked, K Kᵀ beside it; then M = (I + A)⁻¹ column by column:
// column j depends only on itself (M_ij = −Σ_{j≤l<i} A_il M_lj), so each of CH threads owns one, with no barrier.
template <int D>
__device__ void build_inverse(const float* Ks, Gates G, float* As, float* Ms, float* KK)
{
    const int MS = CH + 1, KS = D + 1;
    for (int idx = threadIdx.x; idx < CH * CH; idx += NT)
    {
        int i = idx / CH, j = idx % CH;
        float kk = 0.f, a = 0.f;
        if (j < i)
        {
            for (int c = 0; c < D; ++c) kk += Ks[i * KS + c] * Ks[j * KS + c];
            a = G.kap[i] * kk * expf(G.gam0[i] - G.gam[j]);
        }
        As[i * MS + j] = a;
        if (KK) KK[i * MS + j] = kk;
    }
    __syncthreads();
    if (threadIdx.x < CH)
    {
        int j = threadIdx.x;
        for (int i = 0; i < CH; ++i)
        {
            float m = i == j ? 1.f : 0.f;
            if (i > j)
            {
                float s = 0.f;
                for (int l = j; l < i; ++l) s += As[i * MS + l] * Ms[l * MS + j];
                m = -s;
            }
            Ms[i * MS + j] = m;
        }
    }
    __syncthreads();
}

// ───────────────────────────── forward ─────────────────────────────

// grid (N, B·H): W and U of every chunk.
template <int D, typename X>
__device__ void fwd_prepare(const X* k, const X* v, const float* g, const float* beta, const float* kappa,
                            float* W, float* U, int H, int Hkv, int T)
{
    extern __shared__ float sm[];
    const int KS = D + 1, MS = CH + 1, n = blockIdx.x, N = gridDim.x, Tp = N * CH, t0 = n * CH;
    Head hd(blockIdx.y, H, Hkv);
    float* Ks = sm;
    float* Vs = Ks + CH * KS;
    float* As = Vs + CH * KS;
    float* Ms = As + CH * MS;
    Gates G = carve_gates(Ms + CH * MS);
    float* bw = G.kap + CH;
    load_rows<D>(Ks, k + hd.kv(Hkv, T) * D, t0, T);
    load_rows<D>(Vs, v + hd.kv(Hkv, T) * D, t0, T);
    load_gates(G, g + hd.q(T), beta + hd.q(T), kappa + hd.q(T), t0, T);
    if (threadIdx.x < CH) bw[threadIdx.x] = G.kap[threadIdx.x] * expf(G.gam0[threadIdx.x]);
    build_inverse<D>(Ks, G, As, Ms, nullptr);
    for (int idx = threadIdx.x; idx < CH * D; idx += NT)
    {
        int i = idx / D, c = idx % D;
        float u = 0.f, w = 0.f;
        for (int j = 0; j <= i; ++j)
        {
            float m = Ms[i * MS + j];
            u += m * G.bet[j] * Vs[j * KS + c];
            w += m * bw[j] * Ks[j * KS + c];
        }
        size_t row = (size_t)hd.bh * Tp + t0 + i;
        U[row * D + c] = u;
        W[row * D + c] = w;
    }
}

// grid (D/BV, B·H): the only sequential pass. Keeps a D×BV slice of h, writes every chunk-start state and Ũ.
template <int D, typename X>
__device__ void fwd_state(const X* k, const float* g, const float* W, const float* U, const float* h0,
                          float* Ut, float* H0, float* hT, int H, int Hkv, int T, int N)
{
    extern __shared__ float sm[];
    const int KS = D + 1, US = BV + 1, Tp = N * CH, v0 = blockIdx.x * BV;
    Head hd(blockIdx.y, H, Hkv);
    float* hs = sm;                 // D × BV
    float* Ws = hs + D * BV;        // CH × (D+1)
    float* Kt = Ws + CH * KS;       // CH × (D+1), K ⊙ e^{γ_C − γ}
    float* Us = Kt + CH * KS;       // CH × (BV+1)
    Gates G = carve_gates(Us + CH * US);
    for (int idx = threadIdx.x; idx < D * BV; idx += NT)
        hs[idx] = h0 ? h0[(size_t)hd.bh * D * D + (idx / BV) * D + v0 + idx % BV] : 0.f;
    for (int n = 0; n < N; ++n)
    {
        const int t0 = n * CH;
        __syncthreads();
        for (int idx = threadIdx.x; idx < D * BV; idx += NT)
            H0[((size_t)hd.bh * N + n) * D * D + (idx / BV) * D + v0 + idx % BV] = hs[idx];
        load_gates(G, g + hd.q(T), g + hd.q(T), g + hd.q(T), t0, T);   // only γ is used here
        const float gC = G.gam[CH - 1];
        for (int idx = threadIdx.x; idx < CH * D; idx += NT)
        {
            int i = idx / D, c = idx % D, t = t0 + i;
            size_t row = (size_t)hd.bh * Tp + t0 + i;
            Ws[i * KS + c] = W[row * D + c];
            Kt[i * KS + c] = t < T ? ld(k + (hd.kv(Hkv, T) + t) * D + c) * expf(gC - G.gam[i]) : 0.f;
        }
        for (int idx = threadIdx.x; idx < CH * BV; idx += NT)
        {
            int i = idx / BV, c = idx % BV;
            Us[i * US + c] = U[((size_t)hd.bh * Tp + t0 + i) * D + v0 + c];
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < CH * BV; idx += NT)
        {
            int i = idx / BV, c = idx % BV;
            float s = Us[i * US + c];
            for (int kk = 0; kk < D; ++kk) s -= Ws[i * KS + kk] * hs[kk * BV + c];
            Us[i * US + c] = s;
            Ut[((size_t)hd.bh * Tp + t0 + i) * D + v0 + c] = s;
        }
        __syncthreads();
        const float aC = expf(gC);
        for (int idx = threadIdx.x; idx < D * BV; idx += NT)
        {
            int kk = idx / BV, c = idx % BV;
            float s = aC * hs[idx];
            for (int i = 0; i < CH; ++i) s += Kt[i * KS + kk] * Us[i * US + c];
            hs[idx] = s;
        }
    }
    __syncthreads();
    if (hT)
        for (int idx = threadIdx.x; idx < D * BV; idx += NT)
            hT[(size_t)hd.bh * D * D + (idx / BV) * D + v0 + idx % BV] = hs[idx];
}

// S = (Q Kᵀ) ⊙ e^{γ_i − γ_j} ⊙ causal (diagonal included), into shared memory.
template <int D>
__device__ void build_scores(const float* Qs, const float* Ks, Gates G, float* S)
{
    const int KS = D + 1, MS = CH + 1;
    for (int idx = threadIdx.x; idx < CH * CH; idx += NT)
    {
        int i = idx / CH, j = idx % CH;
        float s = 0.f;
        if (j <= i)
        {
            for (int c = 0; c < D; ++c) s += Qs[i * KS + c] * Ks[j * KS + c];
            s *= expf(G.gam[i] - G.gam[j]);
        }
        S[i * MS + j] = s;
    }
    __syncthreads();
}

// grid (N, B·H): O = s [e^{γ} ⊙ (Q h) + S Ũ].
template <int D, typename X>
__device__ void fwd_output(const X* q, const X* k, const float* g, const float* Ut, const float* H0,
                           X* o, float scale, int H, int Hkv, int T)
{
    extern __shared__ float sm[];
    const int KS = D + 1, MS = CH + 1, n = blockIdx.x, N = gridDim.x, Tp = N * CH, t0 = n * CH;
    Head hd(blockIdx.y, H, Hkv);
    float* Qs = sm;
    float* Ks = Qs + CH * KS;
    float* S = Ks + CH * KS;
    Gates G = carve_gates(S + CH * MS);
    load_rows<D>(Qs, q + hd.q(T) * D, t0, T);
    load_rows<D>(Ks, k + hd.kv(Hkv, T) * D, t0, T);
    load_gates(G, g + hd.q(T), g + hd.q(T), g + hd.q(T), t0, T);
    build_scores<D>(Qs, Ks, G, S);
    const float* h = H0 + ((size_t)hd.bh * N + n) * D * D;
    for (int idx = threadIdx.x; idx < CH * D; idx += NT)
    {
        int i = idx / D, c = idx % D, t = t0 + i;
        if (t >= T) continue;
        float inter = 0.f, intra = 0.f;
        for (int kk = 0; kk < D; ++kk) inter += Qs[i * KS + kk] * h[(size_t)kk * D + c];
        for (int j = 0; j <= i; ++j) intra += S[i * MS + j] * Ut[((size_t)hd.bh * Tp + t0 + j) * D + c];
        st(o + (hd.q(T) + t) * D + c, scale * (expf(G.gam[i]) * inter + intra));
    }
}

// ───────────────────────────── backward ─────────────────────────────

// grid (N, B·H): the output's share of dŨ, s Sᵀ dO.
template <int D, typename X>
__device__ void bwd_dupart(const X* q, const X* k, const float* g, const X* dO, float* dUp, float scale,
                           int H, int Hkv, int T)
{
    extern __shared__ float sm[];
    const int KS = D + 1, MS = CH + 1, n = blockIdx.x, N = gridDim.x, Tp = N * CH, t0 = n * CH;
    Head hd(blockIdx.y, H, Hkv);
    float* Qs = sm;
    float* Ks = Qs + CH * KS;
    float* S = Ks + CH * KS;
    Gates G = carve_gates(S + CH * MS);
    load_rows<D>(Qs, q + hd.q(T) * D, t0, T);
    load_rows<D>(Ks, k + hd.kv(Hkv, T) * D, t0, T);
    load_gates(G, g + hd.q(T), g + hd.q(T), g + hd.q(T), t0, T);
    build_scores<D>(Qs, Ks, G, S);
    load_rows<D>(Qs, dO + hd.q(T) * D, t0, T);   // Qs now holds dO
    __syncthreads();
    for (int idx = threadIdx.x; idx < CH * D; idx += NT)
    {
        int j = idx / D, c = idx % D;
        float s = 0.f;
        for (int i = j; i < CH; ++i) s += S[i * MS + j] * Qs[i * KS + c];
        dUp[((size_t)hd.bh * Tp + t0 + j) * D + c] = scale * s;
    }
}

// grid (D/BV, B·H), chunks in reverse: dŨ = dUp + K̃ dh',  dh ← e^{γ_C} dh' + s (e^{γ} ⊙ Q)ᵀ dO − Wᵀ dŨ.
// Writes every chunk-end state gradient dh' (dH1) and dŨ; dh at the start is the initial state's gradient.
template <int D, typename X>
__device__ void bwd_state(const X* q, const X* k, const float* g, const float* W, const X* dO, const float* dUp,
                          const float* dhT, float* dUt, float* dH1, float* dh0, float scale, int H, int Hkv, int T, int N)
{
    extern __shared__ float sm[];
    const int KS = D + 1, US = BV + 1, Tp = N * CH, v0 = blockIdx.x * BV;
    Head hd(blockIdx.y, H, Hkv);
    float* hs = sm;                  // D × BV
    float* Xs = hs + D * BV;         // CH × (D+1): K̃, then e^{γ} ⊙ Q
    float* Ws = Xs + CH * KS;        // CH × (D+1)
    float* dUs = Ws + CH * KS;       // CH × (BV+1)
    float* dOs = dUs + CH * US;      // CH × (BV+1)
    Gates G = carve_gates(dOs + CH * US);
    for (int idx = threadIdx.x; idx < D * BV; idx += NT)
        hs[idx] = dhT ? dhT[(size_t)hd.bh * D * D + (idx / BV) * D + v0 + idx % BV] : 0.f;
    for (int n = N - 1; n >= 0; --n)
    {
        const int t0 = n * CH;
        __syncthreads();
        for (int idx = threadIdx.x; idx < D * BV; idx += NT)
            dH1[((size_t)hd.bh * N + n) * D * D + (idx / BV) * D + v0 + idx % BV] = hs[idx];
        load_gates(G, g + hd.q(T), g + hd.q(T), g + hd.q(T), t0, T);
        const float gC = G.gam[CH - 1];
        for (int idx = threadIdx.x; idx < CH * D; idx += NT)
        {
            int i = idx / D, c = idx % D, t = t0 + i;
            Xs[i * KS + c] = t < T ? ld(k + (hd.kv(Hkv, T) + t) * D + c) * expf(gC - G.gam[i]) : 0.f;
            Ws[i * KS + c] = W[((size_t)hd.bh * Tp + t0 + i) * D + c];
        }
        for (int idx = threadIdx.x; idx < CH * BV; idx += NT)
        {
            int i = idx / BV, c = idx % BV, t = t0 + i;
            dOs[i * US + c] = t < T ? ld(dO + (hd.q(T) + t) * D + v0 + c) : 0.f;
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < CH * BV; idx += NT)
        {
            int i = idx / BV, c = idx % BV;
            size_t at = ((size_t)hd.bh * Tp + t0 + i) * D + v0 + c;
            float s = dUp[at];
            for (int kk = 0; kk < D; ++kk) s += Xs[i * KS + kk] * hs[kk * BV + c];
            dUs[i * US + c] = s;
            dUt[at] = s;
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < CH * D; idx += NT)
        {
            int i = idx / D, c = idx % D, t = t0 + i;
            Xs[i * KS + c] = t < T ? ld(q + (hd.q(T) + t) * D + c) * expf(G.gam[i]) : 0.f;
        }
        __syncthreads();
        const float aC = expf(gC);
        for (int idx = threadIdx.x; idx < D * BV; idx += NT)
        {
            int kk = idx / BV, c = idx % BV;
            float fromOut = 0.f, fromW = 0.f;
            for (int i = 0; i < CH; ++i)
            {
                fromOut += Xs[i * KS + kk] * dOs[i * US + c];
                fromW += Ws[i * KS + kk] * dUs[i * US + c];
            }
            hs[idx] = aC * hs[idx] + scale * fromOut - fromW;
        }
    }
    __syncthreads();
    if (dh0)
        for (int idx = threadIdx.x; idx < D * BV; idx += NT)
            dh0[(size_t)hd.bh * D * D + (idx / BV) * D + v0 + idx % BV] = hs[idx];
}

// grid (N, B·H): every per-chunk gradient. dK and dV come per query head (the caller sums a KV head's group);
// dVb and dKw are float scratch (B·H, N·C, D).
template <int D, typename X>
__device__ void bwd_local(const X* q, const X* k, const X* v, const float* g, const float* beta, const float* kappa,
                          const float* W, const float* U, const float* Ut, const float* H0, const float* dH1,
                          const float* dUt, const X* dO, float* dVb, float* dKw,
                          float* dq, float* dk, float* dv, float* dg, float* dbeta, float* dkappa,
                          float scale, int H, int Hkv, int T)
{
    extern __shared__ float sm[];
    const int KS = D + 1, MS = CH + 1, n = blockIdx.x, N = gridDim.x, Tp = N * CH, t0 = n * CH;
    Head hd(blockIdx.y, H, Hkv);
    float* Ks = sm;
    float* Xs = Ks + CH * KS;        // dŨ, then Q
    float* As = Xs + CH * KS;
    float* Ms = As + CH * MS;
    float* KK = Ms + CH * MS;        // K Kᵀ, later P = dAo ⊙ E
    float* GA = KK + CH * MS;        // dA, then G = dA ⊙ κ_i e^{γ⁰_i − γ_j}
    Gates G = carve_gates(GA + CH * MS);
    float* dgam = G.kap + CH;
    float* dgam0 = dgam + CH;
    float* dkap = dgam0 + CH;
    float* dbet = dkap + CH;
    float* red = dbet + CH;          // block reduction scratch (NT)
    const size_t rowp = (size_t)hd.bh * Tp + t0;      // saved-buffer row of token 0 of this chunk
    const float* h = H0 + ((size_t)hd.bh * N + n) * D * D;
    const float* dh1 = dH1 + ((size_t)hd.bh * N + n) * D * D;

    load_rows<D>(Ks, k + hd.kv(Hkv, T) * D, t0, T);
    load_gates(G, g + hd.q(T), beta + hd.q(T), kappa + hd.q(T), t0, T);
    if (threadIdx.x < CH) dgam[threadIdx.x] = dgam0[threadIdx.x] = dkap[threadIdx.x] = dbet[threadIdx.x] = 0.f;
    red[threadIdx.x] = 0.f;
    build_inverse<D>(Ks, G, As, Ms, KK);
    const float gC = G.gam[CH - 1];

    // dVb = Mᵀ dŨ;  dβ_j = ⟨dVb_j, V_j⟩;  dV_j = β_j dVb_j
    for (int idx = threadIdx.x; idx < CH * D; idx += NT) Xs[(idx / D) * KS + idx % D] = dUt[rowp * D + idx];
    __syncthreads();
    for (int idx = threadIdx.x; idx < CH * D; idx += NT)
    {
        int j = idx / D, c = idx % D, t = t0 + j;
        float s = 0.f;
        for (int i = j; i < CH; ++i) s += Ms[i * MS + j] * Xs[i * KS + c];
        dVb[rowp * D + idx] = s;
        if (t < T)
        {
            dv[(hd.q(T) + t) * D + c] = G.bet[j] * s;
            atomicAdd(&dbet[j], s * ld(v + (hd.kv(Hkv, T) + t) * D + c));
        }
    }
    __syncthreads();
    // dKw = −dVb hᵀ;  r_j = e^{γ⁰_j} ⟨dKw_j, K_j⟩ feeds dκ_j and dγ⁰_j   (one output per warp: rows of dVb and h)
    for (int idx = threadIdx.x >> 5; idx < CH * D; idx += NT / 32)
    {
        int j = idx / D, c = idx % D;
        float s = -warp_dot(dVb + (rowp + j) * D, h + (size_t)c * D, D);
        if ((threadIdx.x & 31) == 0)
        {
            dKw[rowp * D + idx] = s;
            float r = expf(G.gam0[j]) * s * Ks[j * KS + c];
            atomicAdd(&dkap[j], r);
            atomicAdd(&dgam0[j], G.kap[j] * r);
        }
    }
    __syncthreads();
    // dA_ij = −(⟨dVb_i, U_j⟩ + ⟨dKw_i, W_j⟩), strictly lower (one entry per warp)
    for (int idx = threadIdx.x >> 5; idx < CH * CH; idx += NT / 32)
    {
        int i = idx / CH, j = idx % CH;
        float s = 0.f;
        if (j < i)
            s = -warp_dot(dVb + (rowp + i) * D, U + (rowp + j) * D, D) - warp_dot(dKw + (rowp + i) * D, W + (rowp + j) * D, D);
        if ((threadIdx.x & 31) == 0) GA[i * MS + j] = s;
    }
    __syncthreads();
    // from A_ij = κ_i KK_ij e^{γ⁰_i − γ_j}: dκ_i, dγ⁰_i (rows), dγ_j (columns); then G_ij = dA_ij κ_i e^{γ⁰_i − γ_j}
    if (threadIdx.x < CH)
    {
        int i = threadIdx.x;
        float dk_ = 0.f, dg0 = 0.f;
        for (int j = 0; j < i; ++j)
        {
            float da = GA[i * MS + j];
            dk_ += da * KK[i * MS + j] * expf(G.gam0[i] - G.gam[j]);
            dg0 += da * As[i * MS + j];
        }
        dkap[i] += dk_;
        dgam0[i] += dg0;
    }
    else if (threadIdx.x < 2 * CH)
    {
        int j = threadIdx.x - CH;
        float s = 0.f;
        for (int i = j + 1; i < CH; ++i) s += GA[i * MS + j] * As[i * MS + j];
        dgam[j] -= s;
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < CH * CH; idx += NT)
    {
        int i = idx / CH, j = idx % CH;
        GA[i * MS + j] = j < i ? GA[i * MS + j] * G.kap[i] * expf(G.gam0[i] - G.gam[j]) : 0.f;
    }
    // the output part: P = dAo ⊙ E with dAo_ij = s ⟨dO_i, Ũ_j⟩ (j ≤ i); dγ from y = dAo ⊙ (Q Kᵀ) ⊙ E
    load_rows<D>(Xs, q + hd.q(T) * D, t0, T);
    __syncthreads();
    for (int idx = threadIdx.x >> 5; idx < CH * CH; idx += NT / 32)
    {
        int i = idx / CH, j = idx % CH, t = t0 + i;
        float p = 0.f, y = 0.f;
        if (j <= i && t < T)
        {
            float dao = warp_dot(dO + (hd.q(T) + t) * D, Ut + (rowp + j) * D, D);
            float qk = warp_dot(Xs + i * KS, Ks + j * KS, D);
            p = scale * dao * expf(G.gam[i] - G.gam[j]);
            y = p * qk;
        }
        if ((threadIdx.x & 31) == 0)
        {
            KK[i * MS + j] = p;
            As[i * MS + j] = y;   // A is no longer needed
        }
    }
    __syncthreads();
    if (threadIdx.x < CH)
    {
        int i = threadIdx.x;
        float s = 0.f;
        for (int j = 0; j <= i; ++j) s += As[i * MS + j];
        dgam[i] += s;
    }
    __syncthreads();
    if (threadIdx.x < CH)
    {
        int j = threadIdx.x;
        float s = 0.f;
        for (int i = j; i < CH; ++i) s += As[i * MS + j];
        dgam[j] -= s;
    }
    __syncthreads();
    // dQ_i = Σ_j P_ij K_j + s e^{γ_i} h dO_i;  dγ_i += ⟨Q_i, s e^{γ_i} h dO_i⟩   (the h part one output per warp)
    for (int idx = threadIdx.x >> 5; idx < CH * D; idx += NT / 32)
    {
        int i = idx / D, c = idx % D, t = t0 + i;
        if (t >= T) continue;
        float inter = scale * expf(G.gam[i]) * warp_dot(h + (size_t)c * D, dO + (hd.q(T) + t) * D, D);
        if ((threadIdx.x & 31) == 0)
        {
            dq[(hd.q(T) + t) * D + c] = inter;
            atomicAdd(&dgam[i], Xs[i * KS + c] * inter);
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < CH * D; idx += NT)
    {
        int i = idx / D, c = idx % D, t = t0 + i;
        if (t >= T) continue;
        float intra = 0.f;
        for (int j = 0; j <= i; ++j) intra += KK[i * MS + j] * Ks[j * KS + c];
        dq[(hd.q(T) + t) * D + c] += intra;
    }
    // dK̃ = Ũ dh'ᵀ into the dKw scratch, scaled by e^{γ_C − γ_i} (one output per warp); t_i = ⟨that, K_i⟩
    for (int idx = threadIdx.x >> 5; idx < CH * D; idx += NT / 32)
    {
        int i = idx / D, c = idx % D;
        float dkt = expf(gC - G.gam[i]) * warp_dot(Ut + (rowp + i) * D, dh1 + (size_t)c * D, D);
        if ((threadIdx.x & 31) == 0)
        {
            float tk = dkt * Ks[i * KS + c];
            atomicAdd(&dgam[i], -tk);
            red[threadIdx.x] += tk;
            dVb[(rowp + i) * D + c] = dkt;   // dVb is no longer needed
        }
    }
    __syncthreads();
    // dK_i = Σ_j (G_ij + G_ji) K_j + Σ_{l≥i} P_li Q_l + κ_i e^{γ⁰_i} dKw_i + e^{γ_C − γ_i} dK̃_i
    for (int idx = threadIdx.x; idx < CH * D; idx += NT)
    {
        int i = idx / D, c = idx % D, t = t0 + i;
        if (t >= T) continue;
        float fromA = 0.f, fromOut = 0.f;
        for (int j = 0; j < CH; ++j) fromA += (GA[i * MS + j] + GA[j * MS + i]) * Ks[j * KS + c];
        for (int l = i; l < CH; ++l) fromOut += KK[l * MS + i] * Xs[l * KS + c];
        dk[(hd.q(T) + t) * D + c] = fromA + fromOut + G.kap[i] * expf(G.gam0[i]) * dKw[(rowp + i) * D + c] + dVb[(rowp + i) * D + c];
    }
    __syncthreads();
    // dγ_C = Σ_i t_i + e^{γ_C} ⟨h, dh'⟩
    {
        float s = red[threadIdx.x];
        for (int idx = threadIdx.x; idx < D * D; idx += NT) s += expf(gC) * h[idx] * dh1[idx];
        red[threadIdx.x] = s;
    }
    __syncthreads();
    for (int w = NT / 2; w > 0; w >>= 1)
    {
        if (threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
        __syncthreads();
    }
    // dg_t = Σ_{i≥t} dγ_i + Σ_{i>t} dγ⁰_i + dγ_C
    if (threadIdx.x == 0)
    {
        float acc = red[0];
        for (int i = CH - 1; i >= 0; --i)
        {
            acc += dgam[i];
            float here = acc;
            int t = t0 + i;
            if (t < T)
            {
                dg[hd.q(T) + t] = here;
                dbeta[hd.q(T) + t] = dbet[i];
                dkappa[hd.q(T) + t] = dkap[i];
            }
            acc += dgam0[i];
        }
    }
}

// ───────────────────────────── entry points ─────────────────────────────
// One extern "C" symbol per (head dim, input type); names: comba_<stage>_<d>_<f32|bf16>.

#define COMBA_ENTRIES(D, X, TAG)                                                                                     \
    extern "C" __global__ void __launch_bounds__(NT) comba_fwd_prepare_##D##_##TAG(                                   \
        const X* k, const X* v, const float* g, const float* beta, const float* kappa, float* W, float* U,           \
        int H, int Hkv, int T)                                                                                       \
    { fwd_prepare<D, X>(k, v, g, beta, kappa, W, U, H, Hkv, T); }                                                   \
    extern "C" __global__ void __launch_bounds__(NT) comba_fwd_state_##D##_##TAG(                                     \
        const X* k, const float* g, const float* W, const float* U, const float* h0, float* Ut, float* H0,          \
        float* hT, int H, int Hkv, int T, int N)                                                                     \
    { fwd_state<D, X>(k, g, W, U, h0, Ut, H0, hT, H, Hkv, T, N); }                                                  \
    extern "C" __global__ void __launch_bounds__(NT) comba_fwd_output_##D##_##TAG(                                    \
        const X* q, const X* k, const float* g, const float* Ut, const float* H0, X* o, float scale,                \
        int H, int Hkv, int T)                                                                                       \
    { fwd_output<D, X>(q, k, g, Ut, H0, o, scale, H, Hkv, T); }                                                     \
    extern "C" __global__ void __launch_bounds__(NT) comba_bwd_dupart_##D##_##TAG(                                    \
        const X* q, const X* k, const float* g, const X* dO, float* dUp, float scale, int H, int Hkv, int T)        \
    { bwd_dupart<D, X>(q, k, g, dO, dUp, scale, H, Hkv, T); }                                                       \
    extern "C" __global__ void __launch_bounds__(NT) comba_bwd_state_##D##_##TAG(                                     \
        const X* q, const X* k, const float* g, const float* W, const X* dO, const float* dUp, const float* dhT,    \
        float* dUt, float* dH1, float* dh0, float scale, int H, int Hkv, int T, int N)                              \
    { bwd_state<D, X>(q, k, g, W, dO, dUp, dhT, dUt, dH1, dh0, scale, H, Hkv, T, N); }                              \
    extern "C" __global__ void __launch_bounds__(NT) comba_bwd_local_##D##_##TAG(                                     \
        const X* q, const X* k, const X* v, const float* g, const float* beta, const float* kappa,                 \
        const float* W, const float* U, const float* Ut, const float* H0, const float* dH1, const float* dUt,       \
        const X* dO, float* dVb, float* dKw, float* dq, float* dk, float* dv, float* dg, float* dbeta,             \
        float* dkappa, float scale, int H, int Hkv, int T)                                                           \
    { bwd_local<D, X>(q, k, v, g, beta, kappa, W, U, Ut, H0, dH1, dUt, dO, dVb, dKw, dq, dk, dv, dg, dbeta,         \
                      dkappa, scale, H, Hkv, T); }

COMBA_ENTRIES(64, float, f32)
COMBA_ENTRIES(64, bf16_t, bf16)
COMBA_ENTRIES(128, float, f32)
COMBA_ENTRIES(128, bf16_t, bf16)
COMBA_ENTRIES(256, float, f32)
COMBA_ENTRIES(256, bf16_t, bf16)
