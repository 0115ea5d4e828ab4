// Fused chunkwise Comba, forward and backward (docs/architecture.md, "Comba in chunkwise form"). docs/kernels.md explains the
// kernels, their checks and their speed; tools/kernels/comba_check.py is the measuring instrument.
//
// Header-free on purpose: NVRTC from a pip PyTorch install has no CUDA headers. Compiled at first use by
// Ops/FusedComba through Runtime/Cuda.
//
// The op, per query head, for chunks of C = 64 tokens (γ = inclusive cumsum of g inside the chunk, γ⁰ the exclusive
// one, h = Sᵀ the state at the chunk start, κ = βλ):
//   A = strictly-lower(diag(κ) K Kᵀ ⊙ e^{γ⁰_i − γ_j}),  M = (I + A)⁻¹
//   U = M diag(β) V,  W = M diag(κ e^{γ⁰}) K,  Ũ = U − W h,  h ← e^{γ_C} h + (K ⊙ e^{γ_C − γ})ᵀ Ũ
//   O = s [ e^{γ} ⊙ (Q h) + ((Q Kᵀ) ⊙ e^{γ_i − γ_j} ⊙ causal) Ũ ]
// where Q is the corrected, normalised readout q̂ − d k̂ and K the normalised key (the C# side forms them with
// ordinary ops, so autograd covers them).
//
// Launch order, forward:  prepare (all chunks) → state (sequential over chunks) → output (all chunks)
//              backward:  dupart (all chunks)  → dstate (sequential, reverse) → local (all chunks)
// Everything is float32 in memory. T is a whole number of chunks: the caller pads with zeros (g = β = κ = 0 leaves
// the state untouched). Layouts: q (B,H,T,D), k and v (B,Hkv,T,D), g, β, κ (B,H,T); per-chunk buffers W, U, Ũ, dŨ, …
// (B·H, T, D); chunk-start states and their gradients (B·H, N, D, D), row k, column v.
//
// Every matrix product goes through block_mm: with TC (the "tf32" entry points) on tensor cores, mma.sync m16n8k8
// with tf32 operands and float32 accumulation; without it (the "f32" entry points) in plain float32 FMAs, for callers
// whose inputs are float32 and who want float32 accuracy. Operands are read where they lie (global or shared
// memory) through strided views, so transposes cost nothing and little is staged.

#define CH 64
#define NT 256
#define NW (NT / 32)
#define BV 32
#define HS (BV + 4)   // row stride of a D×BV state slice in shared memory (conflict-free mma fragment loads)

// A strided float matrix view: element (r, c) at p[r·rs + c·cs].
struct Mat
{
    const float* p;
    int rs, cs;
    __device__ __forceinline__ float at(int r, int c) const { return p[r * rs + c * cs]; }
};
__device__ __forceinline__ Mat rows(const float* p, int stride) { return Mat{p, stride, 1}; }   // row-major
__device__ __forceinline__ Mat cols(const float* p, int stride) { return Mat{p, 1, stride}; }   // its transpose

__device__ __forceinline__ unsigned tf32(float x)
{
    unsigned u;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(x));
    return u;
}

// out(i, j, ·) once for every element of the M×N product  diag(scale1) A1 B1 + A2 B2  (K1, K2 multiples of 8; K2 may
// be 0; scale1 may be null). Whole block; no barrier inside: callers sync before reading what out wrote.
template <int M, int N, bool TC, class Out>
__device__ __forceinline__ void block_mm(Mat A1, Mat B1, int K1, const float* scale1, Mat A2, Mat B2, int K2, Out out)
{
    if constexpr (TC)
    {
        constexpr int WN = N >= 32 ? 4 : N / 8;        // 8-column tiles per warp item, sharing one A fragment
        constexpr int ITEMS_N = N / (8 * WN), ITEMS = (M / 16) * ITEMS_N;
        const int lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
        for (int item = threadIdx.x >> 5; item < ITEMS; item += NW)
        {
            const int r0 = (item / ITEMS_N) * 16, c0 = (item % ITEMS_N) * 8 * WN;
            float acc[WN][4];
#pragma unroll
            for (int w = 0; w < WN; ++w) acc[w][0] = acc[w][1] = acc[w][2] = acc[w][3] = 0.f;
            auto run = [&](const Mat& A, const Mat& B, int K) {
                for (int k = 0; k < K; k += 8)
                {
                    unsigned a0 = tf32(A.at(r0 + g, k + t4)), a1 = tf32(A.at(r0 + g + 8, k + t4));
                    unsigned a2 = tf32(A.at(r0 + g, k + t4 + 4)), a3 = tf32(A.at(r0 + g + 8, k + t4 + 4));
#pragma unroll
                    for (int w = 0; w < WN; ++w)
                    {
                        unsigned b0 = tf32(B.at(k + t4, c0 + 8 * w + g)), b1 = tf32(B.at(k + t4 + 4, c0 + 8 * w + g));
                        asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                                     : "+f"(acc[w][0]), "+f"(acc[w][1]), "+f"(acc[w][2]), "+f"(acc[w][3])
                                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
                    }
                }
            };
            run(A1, B1, K1);
            if (scale1)
            {
                float s0 = scale1[r0 + g], s1 = scale1[r0 + g + 8];
#pragma unroll
                for (int w = 0; w < WN; ++w) { acc[w][0] *= s0; acc[w][1] *= s0; acc[w][2] *= s1; acc[w][3] *= s1; }
            }
            if (K2 > 0) run(A2, B2, K2);
#pragma unroll
            for (int w = 0; w < WN; ++w)
            {
                const int c = c0 + 8 * w + 2 * t4;
                out(r0 + g, c, acc[w][0]);
                out(r0 + g, c + 1, acc[w][1]);
                out(r0 + g + 8, c, acc[w][2]);
                out(r0 + g + 8, c + 1, acc[w][3]);
            }
        }
    }
    else
    {
        for (int idx = threadIdx.x; idx < M * N; idx += NT)
        {
            const int i = idx / N, j = idx % N;
            float s = 0.f;
            for (int k = 0; k < K1; ++k) s += A1.at(i, k) * B1.at(k, j);
            if (scale1) s *= scale1[i];
            for (int k = 0; k < K2; ++k) s += A2.at(i, k) * B2.at(k, j);
            out(i, j, s);
        }
    }
}

template <int M, int N, bool TC, class Out>
__device__ __forceinline__ void block_mm(Mat A, Mat B, int K, Out out)
{
    block_mm<M, N, TC>(A, B, K, nullptr, A, B, 0, out);
}

// Σ_t a[t] b[t] over t < n for two contiguous rows, by one warp (lanes stride over t: coalesced); every lane gets it.
__device__ __forceinline__ float warp_dot(const float* a, const float* b, int n)
{
    float s = 0.f;
    for (int t = threadIdx.x & 31; t < n; t += 32) s += a[t] * b[t];
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    return s;
}

// CH rows of a row-major (·, D) float matrix into shared memory with row stride D + 4 (tensor-core fragment loads
// then hit distinct banks, direct or transposed), in 16-byte coalesced loads. Callers sync before use.
template <int D>
__device__ __forceinline__ void stage_rows(float* s, const float* src)
{
    for (int idx = threadIdx.x; idx < CH * D / 4; idx += NT)
    {
        int i = idx / (D / 4), c4 = idx % (D / 4);
        *reinterpret_cast<float4*>(s + i * (D + 4) + 4 * c4) = reinterpret_cast<const float4*>(src + (size_t)i * D)[c4];
    }
}

struct Head
{
    int bh, b, hq, hk;
    __device__ Head(int bh_, int H, int Hkv) : bh(bh_), b(bh_ / H), hq(bh_ % H), hk((bh_ % H) / (H / Hkv)) {}
    __device__ size_t q(int T) const { return (size_t)bh * T; }                        // token row base, per query head
    __device__ size_t kv(int Hkv, int T) const { return ((size_t)b * Hkv + hk) * T; }  // token row base, per KV head
};

// g, β, κ of one chunk and the cumulative sums; γ⁰_i is γ_{i−1} exactly (same bits), so e^{γ⁰_i − γ_{i−1}} = 1.
struct Gates { float *gam, *gam0, *bet, *kap; };

__device__ Gates carve_gates(float* p) { return Gates{p, p + CH, p + 2 * CH, p + 3 * CH}; }

__device__ void load_gates(Gates G, const float* g, const float* beta, const float* kappa, int t0)
{
    int i = threadIdx.x;
    if (i < CH)
    {
        G.gam[i] = g[t0 + i];
        G.bet[i] = beta ? beta[t0 + i] : 0.f;
        G.kap[i] = kappa ? kappa[t0 + i] : 0.f;
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

// A (strictly lower, row stride CH+4: conflict-free fragment loads) and, if asked, K Kᵀ's strictly lower part; then M = (I + A)⁻¹ column by
// column: column j depends only on itself (M_ij = −Σ_{j≤l<i} A_il M_lj), so each of CH threads owns one, no barrier.
template <int D, bool TC>
__device__ void build_inverse(const float* K, int ks, Gates G, float* As, float* Ms, float* KK)
{
    const int MS = CH + 4;
    block_mm<CH, CH, TC>(rows(K, ks), cols(K, ks), D, [&](int i, int j, float kk) {
        As[i * MS + j] = j < i ? G.kap[i] * kk * expf(G.gam0[i] - G.gam[j]) : 0.f;
        if (KK) KK[i * MS + j] = j < i ? kk : 0.f;
    });
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

// S = (Q Kᵀ) ⊙ e^{γ_i − γ_j} ⊙ causal (diagonal included), into shared memory.
template <int D, bool TC>
__device__ void build_scores(const float* Q, const float* K, int ks, Gates G, float* S)
{
    const int MS = CH + 4;
    block_mm<CH, CH, TC>(rows(Q, ks), cols(K, ks), D, [&](int i, int j, float qk) {
        S[i * MS + j] = j <= i ? qk * expf(G.gam[i] - G.gam[j]) : 0.f;
    });
    __syncthreads();
}

// ───────────────────────────── forward ─────────────────────────────

// grid (N, B·H): W and U of every chunk.  U = (M diag β) V,  W = (M diag κe^{γ⁰}) K.
template <int D, bool TC, bool STAGE>
__device__ void fwd_prepare(const float* k, const float* v, const float* g, const float* beta, const float* kappa,
                            float* W, float* U, int H, int Hkv, int T)
{
    extern __shared__ float sm[];
    const int MS = CH + 4, n = blockIdx.x, t0 = n * CH;
    Head hd(blockIdx.y, H, Hkv);
    float* As = sm;
    float* Ms = As + CH * MS;
    Gates G = carve_gates(Ms + CH * MS);
    float* Ks = G.kap + CH;          // STAGE: CH × (D+4)
    const int ks = STAGE ? D + 4 : D;
    const float* K = k + (hd.kv(Hkv, T) + t0) * D;
    const float* V = v + (hd.kv(Hkv, T) + t0) * D;
    const size_t row0 = hd.q(T) + t0;
    if (STAGE) { stage_rows<D>(Ks, K); K = Ks; }
    load_gates(G, g + hd.q(T), beta + hd.q(T), kappa + hd.q(T), t0);
    build_inverse<D, TC>(K, ks, G, As, Ms, nullptr);
    for (int idx = threadIdx.x; idx < CH * CH; idx += NT)   // As ← M diag(κ e^{γ⁰}), Ms ← M diag(β)
    {
        int i = idx / CH, j = idx % CH;
        float m = Ms[i * MS + j];
        As[i * MS + j] = m * G.kap[j] * expf(G.gam0[j]);
        Ms[i * MS + j] = m * G.bet[j];
    }
    __syncthreads();
    block_mm<CH, D, TC>(rows(Ms, MS), rows(V, D), CH, [&](int i, int c, float x) { U[(row0 + i) * D + c] = x; });
    block_mm<CH, D, TC>(rows(As, MS), rows(K, ks), CH, [&](int i, int c, float x) { W[(row0 + i) * D + c] = x; });
}

// grid (D/BV, B·H): the only sequential pass. Keeps a D×BV slice of h in shared memory, writes every chunk-start
// state and Ũ.  Ũ = U − W h;  h ← e^{γ_C} h + Kᵀ (e^{γ_C − γ} ⊙ Ũ).
template <int D, bool TC>
__device__ void fwd_state(const float* k, const float* g, const float* W, const float* U, const float* h0,
                          float* Ut, float* H0, float* hT, int H, int Hkv, int T, int N)
{
    extern __shared__ float sm[];
    const int US = BV + 4, v0 = blockIdx.x * BV;
    Head hd(blockIdx.y, H, Hkv);
    float* hs = sm;                 // D × BV, row stride HS
    float* Us = hs + D * HS;        // CH × (BV+4): e^{γ_C − γ} ⊙ Ũ
    Gates G = carve_gates(Us + CH * US);
    for (int idx = threadIdx.x; idx < D * BV; idx += NT)
        hs[(idx / BV) * HS + idx % BV] = h0 ? h0[(size_t)hd.bh * D * D + (idx / BV) * D + v0 + idx % BV] : 0.f;
    for (int n = 0; n < N; ++n)
    {
        const int t0 = n * CH;
        const size_t row0 = hd.q(T) + t0;
        __syncthreads();
        for (int idx = threadIdx.x; idx < D * BV; idx += NT)
            H0[((size_t)hd.bh * N + n) * D * D + (idx / BV) * D + v0 + idx % BV] = hs[(idx / BV) * HS + idx % BV];
        load_gates(G, g + hd.q(T), nullptr, nullptr, t0);
        const float gC = G.gam[CH - 1];
        block_mm<CH, BV, TC>(rows(W + row0 * D, D), rows(hs, HS), D, [&](int i, int c, float wh) {
            float u = U[(row0 + i) * D + v0 + c] - wh;
            Ut[(row0 + i) * D + v0 + c] = u;
            Us[i * US + c] = u * expf(gC - G.gam[i]);
        });
        __syncthreads();
        const float aC = expf(gC);
        block_mm<D, BV, TC>(cols(k + (hd.kv(Hkv, T) + t0) * D, D), rows(Us, US), CH, [&](int kk, int c, float x) {
            hs[kk * HS + c] = aC * hs[kk * HS + c] + x;
        });
    }
    __syncthreads();
    if (hT)
        for (int idx = threadIdx.x; idx < D * BV; idx += NT)
            hT[(size_t)hd.bh * D * D + (idx / BV) * D + v0 + idx % BV] = hs[(idx / BV) * HS + idx % BV];
}

// grid (N, B·H): O = s [e^{γ} ⊙ (Q h) + S Ũ].
template <int D, bool TC, bool STAGE>
__device__ void fwd_output(const float* q, const float* k, const float* g, const float* Ut, const float* H0,
                           float* o, float scale, int H, int Hkv, int T)
{
    extern __shared__ float sm[];
    const int MS = CH + 4, n = blockIdx.x, N = gridDim.x, t0 = n * CH;
    Head hd(blockIdx.y, H, Hkv);
    float* S = sm;
    Gates G = carve_gates(S + CH * MS);
    float* eg = G.kap + CH;
    float* Qs = eg + CH;             // STAGE: CH × (D+4) each
    float* Ks = Qs + CH * (D + 4);
    const int ks = STAGE ? D + 4 : D;
    const size_t row0 = hd.q(T) + t0;
    const float* Q = q + row0 * D;
    const float* K = k + (hd.kv(Hkv, T) + t0) * D;
    if (STAGE) { stage_rows<D>(Qs, Q); stage_rows<D>(Ks, K); Q = Qs; K = Ks; }
    load_gates(G, g + hd.q(T), nullptr, nullptr, t0);
    if (threadIdx.x < CH) eg[threadIdx.x] = expf(G.gam[threadIdx.x]);
    build_scores<D, TC>(Q, K, ks, G, S);
    const float* h = H0 + ((size_t)hd.bh * N + n) * D * D;
    block_mm<CH, D, TC>(rows(Q, ks), rows(h, D), D, eg, rows(S, MS), rows(Ut + row0 * D, D), CH,
                        [&](int i, int c, float x) { o[(row0 + i) * D + c] = scale * x; });
}

// ───────────────────────────── backward ─────────────────────────────

// grid (N, B·H): the output's share of dŨ, s Sᵀ dO.
template <int D, bool TC, bool STAGE>
__device__ void bwd_dupart(const float* q, const float* k, const float* g, const float* dO, float* dUp, float scale,
                           int H, int Hkv, int T)
{
    extern __shared__ float sm[];
    const int MS = CH + 4, n = blockIdx.x, t0 = n * CH;
    Head hd(blockIdx.y, H, Hkv);
    float* S = sm;
    Gates G = carve_gates(S + CH * MS);
    float* Qs = G.kap + CH;          // STAGE: CH × (D+4) each
    float* Ks = Qs + CH * (D + 4);
    const int ks = STAGE ? D + 4 : D;
    const size_t row0 = hd.q(T) + t0;
    const float* Q = q + row0 * D;
    const float* K = k + (hd.kv(Hkv, T) + t0) * D;
    if (STAGE) { stage_rows<D>(Qs, Q); stage_rows<D>(Ks, K); Q = Qs; K = Ks; }
    load_gates(G, g + hd.q(T), nullptr, nullptr, t0);
    build_scores<D, TC>(Q, K, ks, G, S);
    block_mm<CH, D, TC>(cols(S, MS), rows(dO + row0 * D, D), CH,
                        [&](int j, int c, float x) { dUp[(row0 + j) * D + c] = scale * x; });
}

// grid (D/BV, B·H), chunks in reverse:  dŨ = dUp + (e^{γ_C − γ} ⊙ K) dh',
//   dh ← e^{γ_C} dh' + Qᵀ (s e^{γ} ⊙ dO) − Wᵀ dŨ.
// Writes every chunk-end state gradient dh' (dH1) and dŨ; dh at the start is the initial state's gradient.
template <int D, bool TC>
__device__ void bwd_state(const float* q, const float* k, const float* g, const float* W, const float* dO, const float* dUp,
                          const float* dhT, float* dUt, float* dH1, float* dh0, float scale, int H, int Hkv, int T, int N)
{
    extern __shared__ float sm[];
    const int US = BV + 4, v0 = blockIdx.x * BV;
    Head hd(blockIdx.y, H, Hkv);
    float* hs = sm;                  // D × BV, row stride HS
    float* dUs = hs + D * HS;        // CH × (BV+4): −dŨ
    float* dOs = dUs + CH * US;      // CH × (BV+4): s e^{γ} ⊙ dO
    Gates G = carve_gates(dOs + CH * US);
    float* toEnd = G.kap + CH;
    for (int idx = threadIdx.x; idx < D * BV; idx += NT)
        hs[(idx / BV) * HS + idx % BV] = dhT ? dhT[(size_t)hd.bh * D * D + (idx / BV) * D + v0 + idx % BV] : 0.f;
    for (int n = N - 1; n >= 0; --n)
    {
        const int t0 = n * CH;
        const size_t row0 = hd.q(T) + t0;
        __syncthreads();
        for (int idx = threadIdx.x; idx < D * BV; idx += NT)
            dH1[((size_t)hd.bh * N + n) * D * D + (idx / BV) * D + v0 + idx % BV] = hs[(idx / BV) * HS + idx % BV];
        load_gates(G, g + hd.q(T), nullptr, nullptr, t0);
        const float gC = G.gam[CH - 1];
        if (threadIdx.x < CH) toEnd[threadIdx.x] = expf(gC - G.gam[threadIdx.x]);
        for (int idx = threadIdx.x; idx < CH * BV; idx += NT)
        {
            int i = idx / BV, c = idx % BV;
            dOs[i * US + c] = scale * expf(G.gam[i]) * dO[(row0 + i) * D + v0 + c];
        }
        __syncthreads();
        block_mm<CH, BV, TC>(rows(k + (hd.kv(Hkv, T) + t0) * D, D), rows(hs, HS), D, [&](int i, int c, float x) {
            size_t at = (row0 + i) * D + v0 + c;
            float du = dUp[at] + toEnd[i] * x;
            dUt[at] = du;
            dUs[i * US + c] = -du;
        });
        __syncthreads();
        const float aC = expf(gC);
        block_mm<D, BV, TC>(cols(q + row0 * D, D), rows(dOs, US), CH, nullptr, cols(W + row0 * D, D), rows(dUs, US), CH,
                            [&](int kk, int c, float x) { hs[kk * HS + c] = aC * hs[kk * HS + c] + x; });
    }
    __syncthreads();
    if (dh0)
        for (int idx = threadIdx.x; idx < D * BV; idx += NT)
            dh0[(size_t)hd.bh * D * D + (idx / BV) * D + v0 + idx % BV] = hs[(idx / BV) * HS + idx % BV];
}

// grid (N, B·H): every per-chunk gradient. dK and dV come per query head (the caller sums a KV head's group);
// dVb and dKw are float scratch (B·H, T, D). With dVβ = Mᵀ dŨ and dKw = Mᵀ dW = −dVβ hᵀ, the inverse's gradient is
// dA = −Mᵀ dM Mᵀ = −(dVβ Uᵀ + dKw Wᵀ), because U = M diag(β) V and W = M diag(κe^{γ⁰}) K.
template <int D, bool TC, bool STAGE>
__device__ void bwd_local(const float* q, const float* k, const float* v, const float* g, const float* beta, const float* kappa,
                          const float* W, const float* U, const float* Ut, const float* H0, const float* dH1,
                          const float* dUt, const float* dO, float* dVb, float* dKw,
                          float* dq, float* dk, float* dv, float* dg, float* dbeta, float* dkappa,
                          float scale, int H, int Hkv, int T)
{
    extern __shared__ float sm[];
    const int MS = CH + 4, n = blockIdx.x, N = gridDim.x, t0 = n * CH;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    Head hd(blockIdx.y, H, Hkv);
    float* As = sm;                  // A, then P = dAo ⊙ E
    float* Ms = As + CH * MS;        // M, then y = P ⊙ (Q Kᵀ)
    float* KK = Ms + CH * MS;        // K Kᵀ, then G + Gᵀ
    float* GA = KK + CH * MS;        // dA, then G = dA ⊙ κ_i e^{γ⁰_i − γ_j}
    Gates G = carve_gates(GA + CH * MS);
    float* dgam = G.kap + CH;
    float* dgam0 = dgam + CH;
    float* dkap = dgam0 + CH;
    float* eg = dkap + CH;           // s e^{γ}
    float* red = eg + CH;            // NT
    float* Qs = red + NT;            // STAGE: CH × (D+4) each
    float* Ks = Qs + CH * (D + 4);
    const int ks = STAGE ? D + 4 : D;
    const size_t row0 = hd.q(T) + t0, kv0 = hd.kv(Hkv, T) + t0;
    const float* K = k + kv0 * D;
    const float* V = v + kv0 * D;
    const float* Q = q + row0 * D;
    if (STAGE) { stage_rows<D>(Qs, Q); stage_rows<D>(Ks, K); Q = Qs; K = Ks; }
    const float* h = H0 + ((size_t)hd.bh * N + n) * D * D;
    const float* dh1 = dH1 + ((size_t)hd.bh * N + n) * D * D;
    float* dVbC = dVb + row0 * D;
    float* dKwC = dKw + row0 * D;

    load_gates(G, g + hd.q(T), beta + hd.q(T), kappa + hd.q(T), t0);
    if (threadIdx.x < CH)
    {
        dgam[threadIdx.x] = dgam0[threadIdx.x] = dkap[threadIdx.x] = 0.f;
        eg[threadIdx.x] = scale * expf(G.gam[threadIdx.x]);
    }
    red[threadIdx.x] = 0.f;
    build_inverse<D, TC>(K, ks, G, As, Ms, KK);
    const float gC = G.gam[CH - 1];

    // dVβ = Mᵀ dŨ;  dV = β dVβ
    block_mm<CH, D, TC>(cols(Ms, MS), rows(dUt + row0 * D, D), CH, [&](int j, int c, float x) {
        dVbC[j * D + c] = x;
        dv[(row0 + j) * D + c] = G.bet[j] * x;
    });
    __syncthreads();
    // dKw = −dVβ hᵀ
    block_mm<CH, D, TC>(rows(dVbC, D), cols(h, D), D, [&](int j, int c, float x) { dKwC[j * D + c] = -x; });
    __syncthreads();
    // per-row dots: dβ_j = ⟨dVβ_j, V_j⟩;  r_j = e^{γ⁰_j} ⟨dKw_j, K_j⟩ feeds dκ_j and dγ⁰_j
    for (int j = warp; j < CH; j += NW)
    {
        float db = warp_dot(dVbC + j * D, V + j * D, D);
        float r = expf(G.gam0[j]) * warp_dot(dKwC + j * D, K + j * ks, D);
        if (lane == 0)
        {
            dbeta[row0 + j] = db;
            dkap[j] += r;
            dgam0[j] += G.kap[j] * r;
        }
    }
    // dA = −(dVβ Uᵀ + dKw Wᵀ), strictly lower
    block_mm<CH, CH, TC>(rows(dVbC, D), cols(U + row0 * D, D), D, nullptr, rows(dKwC, D), cols(W + row0 * D, D), D,
                         [&](int i, int j, float x) { GA[i * MS + j] = j < i ? -x : 0.f; });
    __syncthreads();
    // from A_ij = κ_i KK_ij e^{γ⁰_i − γ_j}: dκ_i, dγ⁰_i (rows), dγ_j (columns)
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
    for (int idx = threadIdx.x; idx < CH * CH; idx += NT)   // G = dA ⊙ κ_i e^{γ⁰_i − γ_j}
    {
        int i = idx / CH, j = idx % CH;
        GA[i * MS + j] = j < i ? GA[i * MS + j] * G.kap[i] * expf(G.gam0[i] - G.gam[j]) : 0.f;
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < CH * CH; idx += NT)   // KK ← G + Gᵀ
    {
        int i = idx / CH, j = idx % CH;
        KK[i * MS + j] = GA[i * MS + j] + GA[j * MS + i];
    }
    // the output part: P = dAo ⊙ E with dAo_ij = s ⟨dO_i, Ũ_j⟩ (j ≤ i), then y = P ⊙ (Q Kᵀ)
    block_mm<CH, CH, TC>(rows(dO + row0 * D, D), cols(Ut + row0 * D, D), D, [&](int i, int j, float x) {
        As[i * MS + j] = j <= i ? scale * x * expf(G.gam[i] - G.gam[j]) : 0.f;
    });
    __syncthreads();
    block_mm<CH, CH, TC>(rows(Q, ks), cols(K, ks), D, [&](int i, int j, float x) { Ms[i * MS + j] = As[i * MS + j] * x; });
    __syncthreads();
    if (threadIdx.x < CH)
    {
        int i = threadIdx.x;
        float s = 0.f;
        for (int j = 0; j <= i; ++j) s += Ms[i * MS + j];
        dgam[i] += s;
    }
    __syncthreads();
    if (threadIdx.x < CH)
    {
        int j = threadIdx.x;
        float s = 0.f;
        for (int i = j; i < CH; ++i) s += Ms[i * MS + j];
        dgam[j] -= s;
    }
    // dQ's inter part, s e^{γ_i} h dO_i, first alone: dγ_i += ⟨Q_i, it⟩
    block_mm<CH, D, TC>(rows(dO + row0 * D, D), cols(h, D), D, eg, rows(dO, D), rows(dO, D), 0,
                        [&](int i, int c, float x) { dq[(row0 + i) * D + c] = x; });
    // dK̃ = e^{γ_C − γ} ⊙ (Ũ dh'ᵀ), into the dVβ scratch (no longer needed)
    block_mm<CH, D, TC>(rows(Ut + row0 * D, D), cols(dh1, D), D, [&](int i, int c, float x) {
        dVbC[i * D + c] = expf(gC - G.gam[i]) * x;
    });
    __syncthreads();
    for (int i = warp; i < CH; i += NW)
    {
        float qi = warp_dot(Q + i * ks, dq + (row0 + i) * D, D);
        float ti = warp_dot(dVbC + i * D, K + i * ks, D);
        if (lane == 0)
        {
            dgam[i] += qi - ti;
            red[threadIdx.x] += ti;
        }
    }
    __syncthreads();
    // dQ += P K;  dK = (G + Gᵀ) K + Pᵀ Q + κ e^{γ⁰} ⊙ dKw + dK̃
    block_mm<CH, D, TC>(rows(As, MS), rows(K, ks), CH, [&](int i, int c, float x) { dq[(row0 + i) * D + c] += x; });
    block_mm<CH, D, TC>(rows(KK, MS), rows(K, ks), CH, nullptr, cols(As, MS), rows(Q, ks), CH, [&](int i, int c, float x) {
        dk[(row0 + i) * D + c] = x + G.kap[i] * expf(G.gam0[i]) * dKwC[i * D + c] + dVbC[i * D + c];
    });
    // dγ_C = Σ_i t_i + e^{γ_C} ⟨h, dh'⟩
    {
        float s = red[threadIdx.x];
        float part = 0.f;
        for (int idx = threadIdx.x; idx < D * D; idx += NT) part += h[idx] * dh1[idx];
        red[threadIdx.x] = s + expf(gC) * part;
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
            dg[row0 + i] = acc;
            dkappa[row0 + i] = dkap[i];
            acc += dgam0[i];
        }
    }
}

// ───────────────────────────── entry points ─────────────────────────────
// One extern "C" symbol per (head dim, arithmetic); names: comba_<stage>_<d>_<f32|tf32|tf32s>. "tf32s" stages the
// chunk's q and k rows in shared memory first (D ≤ 128: at D = 256 they would not fit beside the rest).

#define COMBA_ENTRIES(D, TC, STAGE, TAG)                                                                                    \
    extern "C" __global__ void __launch_bounds__(NT) comba_fwd_prepare_##D##_##TAG(                                   \
        const float* k, const float* v, const float* g, const float* beta, const float* kappa, float* W, float* U,   \
        int H, int Hkv, int T)                                                                                       \
    { fwd_prepare<D, TC, STAGE>(k, v, g, beta, kappa, W, U, H, Hkv, T); }                                                  \
    extern "C" __global__ void __launch_bounds__(NT) comba_fwd_state_##D##_##TAG(                                     \
        const float* k, const float* g, const float* W, const float* U, const float* h0, float* Ut, float* H0,      \
        float* hT, int H, int Hkv, int T, int N)                                                                     \
    { fwd_state<D, TC>(k, g, W, U, h0, Ut, H0, hT, H, Hkv, T, N); }                                                 \
    extern "C" __global__ void __launch_bounds__(NT) comba_fwd_output_##D##_##TAG(                                    \
        const float* q, const float* k, const float* g, const float* Ut, const float* H0, float* o, float scale,    \
        int H, int Hkv, int T)                                                                                       \
    { fwd_output<D, TC, STAGE>(q, k, g, Ut, H0, o, scale, H, Hkv, T); }                                                    \
    extern "C" __global__ void __launch_bounds__(NT) comba_bwd_dupart_##D##_##TAG(                                    \
        const float* q, const float* k, const float* g, const float* dO, float* dUp, float scale, int H, int Hkv,   \
        int T)                                                                                                       \
    { bwd_dupart<D, TC, STAGE>(q, k, g, dO, dUp, scale, H, Hkv, T); }                                                      \
    extern "C" __global__ void __launch_bounds__(NT) comba_bwd_state_##D##_##TAG(                                     \
        const float* q, const float* k, const float* g, const float* W, const float* dO, const float* dUp,          \
        const float* dhT, float* dUt, float* dH1, float* dh0, float scale, int H, int Hkv, int T, int N)             \
    { bwd_state<D, TC>(q, k, g, W, dO, dUp, dhT, dUt, dH1, dh0, scale, H, Hkv, T, N); }                             \
    extern "C" __global__ void __launch_bounds__(NT) comba_bwd_local_##D##_##TAG(                                     \
        const float* q, const float* k, const float* v, const float* g, const float* beta, const float* kappa,     \
        const float* W, const float* U, const float* Ut, const float* H0, const float* dH1, const float* dUt,       \
        const float* dO, float* dVb, float* dKw, float* dq, float* dk, float* dv, float* dg, float* dbeta,         \
        float* dkappa, float scale, int H, int Hkv, int T)                                                           \
    { bwd_local<D, TC, STAGE>(q, k, v, g, beta, kappa, W, U, Ut, H0, dH1, dUt, dO, dVb, dKw, dq, dk, dv, dg, dbeta,        \
                       dkappa, scale, H, Hkv, T); }

COMBA_ENTRIES(64, false, false, f32)
COMBA_ENTRIES(64, true, false, tf32)
COMBA_ENTRIES(64, true, true, tf32s)
COMBA_ENTRIES(128, false, false, f32)
COMBA_ENTRIES(128, true, false, tf32)
COMBA_ENTRIES(128, true, true, tf32s)
COMBA_ENTRIES(256, false, false, f32)
COMBA_ENTRIES(256, true, false, tf32)
