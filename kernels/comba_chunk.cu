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
// c += a b on tensor cores for one warp: mma m16n8k8, tf32 operands, float32 accumulation
__device__ __forceinline__ void mma8(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
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
                    const unsigned a[4] = {tf32(A.at(r0 + g, k + t4)), tf32(A.at(r0 + g + 8, k + t4)),
                                           tf32(A.at(r0 + g, k + t4 + 4)), tf32(A.at(r0 + g + 8, k + t4 + 4))};
#pragma unroll
                    for (int w = 0; w < WN; ++w)
                        mma8(acc[w], a, tf32(B.at(k + t4, c0 + 8 * w + g)), tf32(B.at(k + t4 + 4, c0 + 8 * w + g)));
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

// COMBA_ONLY_BF16 / COMBA_ONLY_FLOAT32 leave out the other family's entry points: a bf16 run needs only its 16
// kernels, and compiling the 48 float32/tf32 ones beside them took most of the first step on a fresh machine.
#ifndef COMBA_ONLY_BF16
COMBA_ENTRIES(64, false, false, f32)
COMBA_ENTRIES(64, true, false, tf32)
COMBA_ENTRIES(64, true, true, tf32s)
COMBA_ENTRIES(128, false, false, f32)
COMBA_ENTRIES(128, true, false, tf32)
COMBA_ENTRIES(128, true, true, tf32s)
COMBA_ENTRIES(256, false, false, f32)
COMBA_ENTRIES(256, true, false, tf32)
#endif

// ═════════════════════════════ bf16 path ═════════════════════════════
// q, k, v and dO are bf16 in memory, (B,H,T,D) and (B,Hkv,T,D), with any T: rows past T read as zeros (cp.async
// zero-fill) and outputs past T are not written. g, β, κ are float32 (B,H,T). Every operand tile is copied into shared
// memory with 16-byte cp.async loads, rows padded by 16 bytes (ldmatrix then hits distinct banks), read with ldmatrix
// (.trans where the product needs the transpose) into mma.sync m16n8k16 bf16 fragments, accumulated in float32.
// Intermediates that only feed further products are bf16: W, U, Ũ, M, dŨ and the chunk-start states (and their
// gradients); the states themselves accumulate in float32 registers across chunks; dUp is float32. Internal buffers
// have Tp = N·64 rows per head. Only D = 64 and 128 (bwd_local's tiles would not fit shared memory at 256).
//
// One identity beyond the float path's: dA = −(dVβ Uᵀ + dKw Wᵀ) = −dVβ (U − W h)ᵀ = −dVβ Ũᵀ, since dKw = −dVβ hᵀ; so
// the backward needs neither U nor W per chunk, and M comes saved from the forward (bf16), so no inverse either.

typedef unsigned short bf16r;   // raw bf16 bits
#define SBV 40                  // row stride (elements) of a 64×BV or D×BV bf16 slice
#define SCC 72                  // row stride (elements) of a C×C bf16 matrix
#define SCF 68                  // row stride (floats) of a C×C float matrix

__device__ __forceinline__ float2 f2(float a, float b) { float2 r; r.x = a; r.y = b; return r; }
__device__ __forceinline__ uint2 u2(unsigned a, unsigned b) { uint2 r; r.x = a; r.y = b; return r; }
__device__ __forceinline__ float bf2f(bf16r x) { return __uint_as_float((unsigned)x << 16); }
__device__ __forceinline__ unsigned pack2(float lo, float hi)
{
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
__device__ __forceinline__ bf16r f2bf(float x) { return (bf16r)(pack2(x, 0.f) & 0xffffu); }
__device__ __forceinline__ void st2(bf16r* p, float a, float b) { *reinterpret_cast<unsigned*>(p) = pack2(a, b); }
__device__ __forceinline__ float2 ld2(const bf16r* p)
{
    unsigned u = *reinterpret_cast<const unsigned*>(p);
    return f2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
}
__device__ __forceinline__ unsigned saddr(const void* p)
{
#ifdef COMBA_CVTA_BUILTIN
    // (a candidate) the compiler's own conversion: it sees through it, so a constant offset from one shared pointer
    // folds into the instruction's immediate instead of a fresh 64-bit address and conversion per access
    return (unsigned)__cvta_generic_to_shared(p);
#else
    unsigned long long a;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
    return (unsigned)a;
#endif
}
__device__ __forceinline__ float quad_sum(float s)   // over the 4 lanes of a row of an mma tile
{
    s += __shfl_xor_sync(0xffffffffu, s, 1);
    return s + __shfl_xor_sync(0xffffffffu, s, 2);
}
__device__ __forceinline__ float col_sum(float s)    // over the 8 lanes of a column of an mma tile
{
    s += __shfl_xor_sync(0xffffffffu, s, 4);
    s += __shfl_xor_sync(0xffffffffu, s, 8);
    return s + __shfl_xor_sync(0xffffffffu, s, 16);
}
// float atomic add on shared memory (callers reduce across lanes first: one lane per address)
__device__ __forceinline__ void sadd(float* p, float v) { asm volatile("red.shared.add.f32 [%0], %1;" ::"r"(saddr(p)), "f"(v) : "memory"); }
__device__ __forceinline__ void cp16(void* dst, const void* src, bool valid)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(saddr(dst)), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

// (COMBA_UNROLLED_STAGE, a candidate) f(r, j) for each of this thread's pieces of a rows × V grid (V pieces a row),
// the pieces idx = threadIdx.x + i·NT that the default builds' loops visit, in the same order. rows is a constant at every
// call site, so the loop has a constant trip count: it unrolls, and a thread's pieces are its own row and column plus
// constants, with no division or bound per piece. (The default builds keep their own loops: their code is the one
// checked on the GPU.)
template <int V, class F>
__device__ __forceinline__ void each_piece(int rows, F f)
{
    static_assert(NT % V == 0, "a thread's pieces share one column");
    const int r1 = threadIdx.x / V, j = threadIdx.x % V;
#pragma unroll
    for (int i = 0; i < (rows * V + NT - 1) / NT; ++i)
    {
        const int r = r1 + i * (NT / V);
        if ((rows * V) % NT != 0 && r >= rows) break;
        f(r, j);
    }
}

// rows × COLS bf16 (COLS·2 a multiple of 16 bytes) from global rows of stride gs into shared rows of stride ss; rows at
// or past `valid` are zero-filled. No commit.
template <int COLS>
__device__ __forceinline__ void stage_b(bf16r* s, int ss, const bf16r* src, size_t gs, int rows, int valid)
{
#ifdef COMBA_UNROLLED_STAGE
    each_piece<COLS / 8>(rows, [&](int r, int j) {
        const int c = j * 8;
        const bool ok = r < valid;
        cp16(s + r * ss + c, src + (ok ? (size_t)r * gs + c : 0), ok);
    });
#else
    constexpr int V = COLS / 8;
    for (int idx = threadIdx.x; idx < rows * V; idx += NT)
    {
        int r = idx / V, c = (idx % V) * 8;
        bool ok = r < valid;
        cp16(s + r * ss + c, src + (ok ? (size_t)r * gs + c : 0), ok);
    }
#endif
}
template <int COLS>
__device__ __forceinline__ void stage_f(float* s, int ss, const float* src, size_t gs, int rows)
{
#ifdef COMBA_UNROLLED_STAGE
    each_piece<COLS / 4>(rows, [&](int r, int j) { cp16(s + r * ss + j * 4, src + (size_t)r * gs + j * 4, true); });
#else
    constexpr int V = COLS / 4;
    for (int idx = threadIdx.x; idx < rows * V; idx += NT)
    {
        int r = idx / V, c = (idx % V) * 4;
        cp16(s + r * ss + c, src + (size_t)r * gs + c, true);
    }
#endif
}

// ldmatrix fragments. A is M×K: KM = false stored row-major (m, k) at A[m·s + k]; KM = true stored as its transpose
// (m, k) at A[k·s + m]. B is K×N: NK = true stored as N rows of K (k, n) at B[n·s + k]; NK = false stored row-major
// (k, n) at B[k·s + n]. A gives a0..a3 of one 16×16 tile; B gives (b0, b1) of two adjacent 8-column tiles.
template <bool KM>
__device__ __forceinline__ void ld_a(unsigned (&a)[4], const bf16r* A, int s, int r0, int k0)
{
    const int l = threadIdx.x & 31;
    const bf16r* p = KM ? A + (k0 + (l & 7) + ((l >> 4) << 3)) * s + r0 + (((l >> 3) & 1) << 3)
                        : A + (r0 + (l & 15)) * s + k0 + ((l >> 4) << 3);
    if (KM)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3]) : "r"(saddr(p)));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3]) : "r"(saddr(p)));
}
template <bool NK>
__device__ __forceinline__ void ld_b(unsigned (&b)[4], const bf16r* B, int s, int n0, int k0)
{
    const int l = threadIdx.x & 31;
    const bf16r* p = NK ? B + (n0 + (l & 7) + ((l >> 4) << 3)) * s + k0 + (((l >> 3) & 1) << 3)
                        : B + (k0 + (l & 7) + (((l >> 3) & 1) << 3)) * s + n0 + ((l >> 4) << 3);
    if (NK)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3]) : "r"(saddr(p)));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3]) : "r"(saddr(p)));
}
__device__ __forceinline__ void mma16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// acc (a 16 × 8·WN tile at (r0, c0)) += A B over K (a multiple of 16), for one warp.
template <int WN, bool KM, bool NK>
__device__ __forceinline__ void wmma(float (&acc)[WN][4], const bf16r* A, int as, const bf16r* B, int bs, int r0, int c0, int K)
{
#ifdef COMBA_UNROLLED_MMA
#pragma unroll
#else
#pragma unroll 2
#endif
    for (int k0 = 0; k0 < K; k0 += 16)
    {
        unsigned a[4];
        ld_a<KM>(a, A, as, r0, k0);
#pragma unroll
        for (int w = 0; w < WN; w += 2)
        {
            unsigned b[4];
            ld_b<NK>(b, B, bs, c0 + 8 * w, k0);
            mma16(acc[w], a, b[0], b[1]);
            mma16(acc[w + 1], a, b[2], b[3]);
        }
    }
}
template <int WN> __device__ __forceinline__ void zero(float (&acc)[WN][4])
{
#pragma unroll
    for (int w = 0; w < WN; ++w) acc[w][0] = acc[w][1] = acc[w][2] = acc[w][3] = 0.f;
}
// f(row, col, x(row, col), x(row, col + 1)) for every pair of the tile this lane holds.
template <int WN, class F> __device__ __forceinline__ void each2(float (&acc)[WN][4], int r0, int c0, F f)
{
    const int l = threadIdx.x & 31, g = l >> 2, c = c0 + 2 * (l & 3);
#pragma unroll
    for (int w = 0; w < WN; ++w)
    {
        f(r0 + g, c + 8 * w, acc[w][0], acc[w][1]);
        f(r0 + g + 8, c + 8 * w, acc[w][2], acc[w][3]);
    }
}
// the warp's share of the 16 × 8·WN tiles of an M × N product: f(r0, c0)
template <int M, int N, int WN, class F> __device__ __forceinline__ void tiles(F f)
{
    constexpr int TN = N / (8 * WN), TT = (M / 16) * TN;
    for (int t = threadIdx.x >> 5; t < TT; t += NW) f((t / TN) * 16, (t % TN) * 8 * WN);
}
// out(i, j, x) pairs of the M × N product A B, whole block, no barrier.
template <int M, int N, bool KM, bool NK, class F>
__device__ __forceinline__ void bmm(const bf16r* A, int as, const bf16r* B, int bs, int K, F f)
{
    constexpr int WN = (M / 16) * (N / 32) >= NW ? 4 : 2;   // enough tiles for every warp
    tiles<M, N, WN>([&](int r0, int c0) {
        float acc[WN][4];
        zero(acc);
        wmma<WN, KM, NK>(acc, A, as, B, bs, r0, c0, K);
        each2(acc, r0, c0, f);
    });
}

// γ (inclusive) and γ⁰ (exclusive) cumulative sums of one chunk by warp 0 from lane-held pairs (a = g[2l], b = g[2l+1]).
__device__ __forceinline__ void scan_pairs(float a, float b, float* gam, float* gam0)
{
    const int i = threadIdx.x & 31;
    float s = a + b;
    for (int off = 1; off < 32; off <<= 1)
    {
        float y = __shfl_up_sync(0xffffffffu, s, off);
        if (i >= off) s += y;
    }
    float before = __shfl_up_sync(0xffffffffu, s, 1);
    if (i == 0) before = 0.f;
    gam0[2 * i] = before;
    gam[2 * i] = before + a;
    gam0[2 * i + 1] = before + a;
    gam[2 * i + 1] = s;
}
// g, β, κ of one chunk (zeros past T) into shared memory, with the cumulative sums; ends with a barrier.
__device__ void gates_b(float* gam, float* gam0, float* bet, float* kap, const float* g, const float* beta,
                        const float* kappa, size_t base, int t0, int T)
{
    if (threadIdx.x < 32)
    {
        int t = t0 + 2 * threadIdx.x;
        float a = t < T ? g[base + t] : 0.f, b = t + 1 < T ? g[base + t + 1] : 0.f;
        scan_pairs(a, b, gam, gam0);
    }
    else if (threadIdx.x >= 64 && threadIdx.x < 128 && bet)
    {
        int i = threadIdx.x - 64, t = t0 + i;
        bet[i] = t < T ? beta[base + t] : 0.f;
        kap[i] = t < T ? kappa[base + t] : 0.f;
    }
    __syncthreads();
}

struct HeadB
{
    int bh, b, hq, hk;
    __device__ HeadB(int bh_, int H, int Hkv) : bh(bh_), b(bh_ / H), hq(bh_ % H), hk((bh_ % H) / (H / Hkv)) {}
    __device__ size_t q(int T) const { return (size_t)bh * T; }
    __device__ size_t kv(int Hkv, int T) const { return ((size_t)b * Hkv + hk) * T; }
};

// ── L2 normalisation and the readout correction, forward and backward ──
// One warp per (b, KV head, t) row, D/32 contiguous elements per lane; the row's G query heads ride along.
//   k̂ = k / max(|k|, ε),  q̃_h = q_h / max(|q_h|, ε) − d_h k̂   (ε = 1e-6, as CombaMath.L2Normalize)
#define NORM_FLOOR 1e-6f

template <int E> __device__ __forceinline__ void ldE(float (&x)[E], const bf16r* p)
{
    if (E == 4)
    {
        uint2 u = *reinterpret_cast<const uint2*>(p);
        x[0] = __uint_as_float(u.x << 16); x[1] = __uint_as_float(u.x & 0xffff0000u);
        x[2 % E] = __uint_as_float(u.y << 16); x[3 % E] = __uint_as_float(u.y & 0xffff0000u);
    }
    else
    {
        float2 f = ld2(p);
        x[0] = f.x; x[1 % E] = f.y;
    }
}
template <int E> __device__ __forceinline__ void stE(bf16r* p, const float (&x)[E])
{
    if (E == 4) *reinterpret_cast<uint2*>(p) = u2(pack2(x[0], x[1]), pack2(x[2 % E], x[3 % E]));
    else st2(p, x[0], x[1 % E]);
}
__device__ __forceinline__ float warp_sum(float s)
{
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    return s;
}
template <int E> __device__ __forceinline__ float dotE(const float (&a)[E], const float (&b)[E])
{
    float s = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) s += a[e] * b[e];
    return warp_sum(s);
}

// Rotary position embedding in the rotate_half layout, in registers: element i pairs with i ± D/2, which sits E
// elements further along in the lane 16 away, so one shuffle fetches it. cs, sn: (T, D) float tables, or null.
//   forward  y = x cos + rotate_half(x) sin,     rotate_half(x)_i = −x_{i+D/2} (i < D/2), x_{i−D/2} (i ≥ D/2)
//   backward dx = dy cos + (±) partner(dy sin),   + in the first half, − in the second
template <int E> __device__ __forceinline__ void rotate(float (&x)[E], const float* cs, const float* sn, int t, int lane, bool transposed)
{
    if (cs == nullptr) return;
    constexpr int D = 32 * E;
    const float* c = cs + (size_t)t * D + lane * E;
    const float* s = sn + (size_t)t * D + lane * E;
    const float sign = (lane < 16) != transposed ? -1.f : 1.f;
    float y[E];
#pragma unroll
    for (int e = 0; e < E; ++e)
    {
        const float mine = transposed ? x[e] * s[e] : x[e];
        const float partner = __shfl_xor_sync(0xffffffffu, mine, 16);
        y[e] = transposed ? x[e] * c[e] + sign * partner : x[e] * c[e] + sign * partner * s[e];
    }
#pragma unroll
    for (int e = 0; e < E; ++e) x[e] = y[e];
}

// A 64 × D product's bf16 result leaving through shared memory: the block's warps hold its 16 × 32
// tiles (tiles<CH, D, 4>'s mapping) as bf16 pairs in registers (put), write them into a free 64-row region of stride
// D + 8 (write), and the block stores whole rows in 16-byte pieces (copy). A warp's 4-byte stores straight to global
// memory cover eight 16-byte pieces of eight rows: eight L1 wavefronts for 128 bytes.
template <int D> struct StagedOut
{
    static constexpr int WN = 4, TN = D / (8 * WN), PER = (CH / 16) * TN / NW;
    unsigned pk[PER][WN][2];
    __device__ static int row(int e) { return ((threadIdx.x >> 5) + e * NW) / TN * 16 + ((threadIdx.x & 31) >> 2); }
    __device__ static int col(int e) { return ((threadIdx.x >> 5) + e * NW) % TN * 8 * WN + 2 * (threadIdx.x & 3); }
    __device__ void put(int e, const float (&acc)[WN][4], float s = 1.f)
    {
#pragma unroll
        for (int w = 0; w < WN; ++w) pk[e][w][0] = pack2(s * acc[w][0], s * acc[w][1]), pk[e][w][1] = pack2(s * acc[w][2], s * acc[w][3]);
    }
    __device__ void write(bf16r* X) const
    {
#pragma unroll
        for (int e = 0; e < PER; ++e)
#pragma unroll
            for (int w = 0; w < WN; ++w)
            {
                *reinterpret_cast<unsigned*>(X + row(e) * (D + 8) + col(e) + 8 * w) = pk[e][w][0];
                *reinterpret_cast<unsigned*>(X + (row(e) + 8) * (D + 8) + col(e) + 8 * w) = pk[e][w][1];
            }
    }
    // rows below `valid` of X into out (rows of D)
    __device__ static void copy(const bf16r* X, bf16r* out, int valid)
    {
        for (int idx = threadIdx.x; idx < CH * (D / 8); idx += NT)
        {
            const int r = idx / (D / 8), c = (idx % (D / 8)) * 8;
            if (r < valid) *reinterpret_cast<uint4*>(out + (size_t)r * D + c) = *reinterpret_cast<const uint4*>(X + r * (D + 8) + c);
        }
    }
};

// A = strictly-lower(diag(κ) K Kᵀ ⊙ e^{γ⁰_i − γ_j}) of one chunk, float, into As (stride SCF). Rows are stored with 4
// floats of padding after column 31 (column c at c + 4·(c ≥ 32)); with the row stride SCF ≡ 4 (mod 32), the
// blocked inverse's A-fragment reads (8 rows × 4 columns a warp) fall in 32 distinct banks (its B-fragment reads
// and C stores are 2-way conflicted). Whole block, no barrier.
__device__ __forceinline__ int pcol(int c) { return c + ((c >> 5) << 2); }   // As's column of A's column c
template <int D>
__device__ __forceinline__ void build_a_b(const bf16r* Ks, float* As, const float* gam, const float* gam0, const float* kap)
{
    bmm<CH, CH, false, true>(Ks, D + 8, Ks, D + 8, D, [&](int i, int j, float x0, float x1) {
        // pcol(j) written out: calling it reorders the SASS of the build that was checked on the GPU
        float* a = As + i * SCF + j + ((j >> 5) << 2);
        a[0] = j < i ? kap[i] * x0 * expf(gam0[i] - gam[j]) : 0.f;
        a[1] = j + 1 < i ? kap[i] * x1 * expf(gam0[i] - gam[j + 1]) : 0.f;
    });
}
// M = (I + A)⁻¹ block by block, for A strictly lower in As (stride SCF, padded as build_a_b writes it),
// seen as 4 × 4 blocks of 16 × 16. From (I + A) M = I: M_ii = D_i = (I + A_ii)⁻¹, and for i > j
// M_ij = −D_i Σ_{k=j…i−1} A_ik M_kj with M_jj = D_j. The four D_i are forward substitutions of 15 rows, one thread per
// column (64 threads); the six M_ij follow in three rounds of i − j, one warp per 8-column half of a block, on tensor
// cores: mma m16n8k8 with tf32 operands, each operand split as hi + lo and the product formed as
// hi·hi + hi·lo + lo·hi, which is accurate to float32 (one tf32 product is not: 2^-11 of each term). D_i is written over
// A_ii, and M_ij (i > j) into the block (j, i) above the diagonal, which A leaves zero and nothing reads. Ends with
// each lane (q = lane / 8, column j = 8·warp + lane % 8) holding rows 16q…16q+15 of column j of M in m; barriers
// inside; the caller syncs before As is written again.
__device__ __forceinline__ void split_tf32(float x, unsigned& hi, unsigned& lo)
{
    hi = tf32(x);
    lo = tf32(x - __uint_as_float(hi));
}
// c (16 × 8, mma layout) += P Q for a 16 × 16 block P and a 16 × 8 block Q of As (row stride SCF), one warp
__device__ __forceinline__ void mma_blk(float (&c)[4], const float* P, const float* Q)
{
    const int l = threadIdx.x & 31, g = l >> 2, t = l & 3;
#pragma unroll
    for (int k = 0; k < 16; k += 8)
    {
        unsigned ah[4], al[4], bh0, bl0, bh1, bl1;
        split_tf32(P[g * SCF + k + t], ah[0], al[0]);
        split_tf32(P[(g + 8) * SCF + k + t], ah[1], al[1]);
        split_tf32(P[g * SCF + k + t + 4], ah[2], al[2]);
        split_tf32(P[(g + 8) * SCF + k + t + 4], ah[3], al[3]);
        split_tf32(Q[(k + t) * SCF + g], bh0, bl0);
        split_tf32(Q[(k + t + 4) * SCF + g], bh1, bl1);
        mma8(c, al, bh0, bh1);
        mma8(c, ah, bl0, bl1);
        mma8(c, ah, bh0, bh1);
    }
}
__device__ __forceinline__ void invert_blocked(float* As, float (&m)[16])
{
    auto blk = [&](int i, int j) { return As + 16 * i * SCF + pcol(16 * j); };    // A's block (i, j)
    auto mblk = [&](int i, int j) { return i == j ? blk(i, i) : blk(j, i); };      // where M_ij is kept
    if (threadIdx.x < 64)
    {
        const int b = threadIdx.x >> 4, c = threadIdx.x & 15;
        float* Ab = blk(b, b);
        float x[16];
#pragma unroll
        for (int u = 0; u < 16; ++u) x[u] = u == c ? 1.f : 0.f;
#pragma unroll
        for (int i = 1; i < 16; ++i)
        {
            const float4* a = reinterpret_cast<const float4*>(Ab + i * SCF);
            float s0 = 0.f, s1 = 0.f;
#pragma unroll
            for (int l4 = 0; 4 * l4 < i; ++l4)   // A_il = 0 for l ≥ i, so whole float4s are summed
            {
                const float4 v = a[l4];
                s0 += v.x * x[4 * l4] + v.z * x[4 * l4 + 2];
                s1 += v.y * x[4 * l4 + 1] + v.w * x[4 * l4 + 3];
            }
            if (i > c) x[i] = -(s0 + s1);
        }
        __syncwarp();   // the 16 threads of block b share one warp: all have read A_bb
#pragma unroll
        for (int u = 0; u < 16; ++u) Ab[u * SCF + c] = x[u];
    }
    __syncthreads();
    const int w = threadIdx.x >> 5, l = threadIdx.x & 31, g = l >> 2, t = l & 3;
#pragma unroll
    for (int d = 1; d < 4; ++d)
    {
        if (w < 2 * (4 - d))
        {
            const int i = d + (w >> 1), j = i - d, h = 8 * (w & 1);
            float x[4] = {0.f, 0.f, 0.f, 0.f}, y[4] = {0.f, 0.f, 0.f, 0.f};
            for (int k = j; k < i; ++k) mma_blk(x, blk(i, k), mblk(k, j) + h);
            float* dst = mblk(i, j) + h;   // X = Σ A_ik M_kj goes here first, then M_ij = −D_i X over it
            dst[g * SCF + 2 * t] = x[0], dst[g * SCF + 2 * t + 1] = x[1];
            dst[(g + 8) * SCF + 2 * t] = x[2], dst[(g + 8) * SCF + 2 * t + 1] = x[3];
            __syncwarp();
            mma_blk(y, mblk(i, i), dst);
            __syncwarp();
            dst[g * SCF + 2 * t] = -y[0], dst[g * SCF + 2 * t + 1] = -y[1];
            dst[(g + 8) * SCF + 2 * t] = -y[2], dst[(g + 8) * SCF + 2 * t + 1] = -y[3];
        }
        __syncthreads();
    }
    const int q = l >> 3, j = (w << 3) | (l & 7), bj = j >> 4;
    const float* col = q < bj ? nullptr : mblk(q, bj) + (j & 15);
#pragma unroll
    for (int u = 0; u < 16; ++u) m[u] = col ? col[u * SCF] : 0.f;
}

// ── forward ──
// grid (N, B·H). A, M = (I + A)⁻¹ (float32), saved as bf16 for the backward; U = M diag(β) V, W = M diag(κe^{γ⁰}) K.
// Shared memory: the K and V tiles, one region that holds A (float, stride SCF) and, once the inverse is in registers,
// the two scaled bf16 copies of M, and the gates: 53 KB at D = 128, four blocks per SM. V's tile arrives while A and
// the inverse are computed.
template <int D>
__device__ void fwd_prepare_b(const bf16r* k, const bf16r* v, const float* g, const float* beta, const float* kappa,
                              bf16r* W, bf16r* U, bf16r* Msave, int H, int Hkv, int T)
{
    extern __shared__ float4 smq[];
    unsigned char* smb = reinterpret_cast<unsigned char*>(smq);
    constexpr int SD = D + 8;
    const int n = blockIdx.x, N = gridDim.x, t0 = n * CH, Tp = N * CH;
    HeadB hd(blockIdx.y, H, Hkv);
    bf16r* Ks = (bf16r*)smb;
    bf16r* Vs = Ks + CH * SD;
    float* As = (float*)(Vs + CH * SD);
    bf16r* Mb = (bf16r*)As;             // M diag(β) and M diag(κe^{γ⁰}) over A, once A has been read
    bf16r* Mk = Mb + CH * SCC;
    float* gam = (float*)(Mk + CH * SCC);
    float *gam0 = gam + CH, *bet = gam0 + CH, *kap = bet + CH;
    const size_t kv0 = hd.kv(Hkv, T) + t0;
    stage_b<D>(Ks, SD, k + kv0 * D, D, CH, T - t0);
    cp_commit();
    stage_b<D>(Vs, SD, v + kv0 * D, D, CH, T - t0);
    cp_commit();
    gates_b(gam, gam0, bet, kap, g, beta, kappa, hd.q(T), t0, T);
    cp_wait<1>();
    __syncthreads();
    build_a_b<D>(Ks, As, gam, gam0, kap);
    __syncthreads();
    const int lane = threadIdx.x & 31, q = lane >> 3, j = ((threadIdx.x >> 5) << 3) | (lane & 7);
    float m[16];
    invert_blocked(As, m);
    __syncthreads();   // A is read; its region takes the scaled copies of M
    {   // rows in pairs: lanes j and j ^ 1 hold adjacent columns, so one shuffle gives each the other's half of a
        // 4-byte pair; the even lane writes row u, the odd lane row u + 1
        const bool odd = j & 1;
        // (m κ) e^{γ⁰} in that order: the rounding of the kernels before v6, so that W kept its bits
        const float sb = bet[j], kj = kap[j], ej = expf(gam0[j]);
        const float ob = __shfl_xor_sync(0xffffffffu, sb, 1), ok = __shfl_xor_sync(0xffffffffu, kj, 1),
                    oe = __shfl_xor_sync(0xffffffffu, ej, 1);
        bf16r* Mg = Msave + ((size_t)hd.bh * N + n) * CH * CH;
#pragma unroll
        for (int u = 0; u < 16; u += 2)
        {
            const float mine = odd ? m[u + 1] : m[u], other = __shfl_xor_sync(0xffffffffu, odd ? m[u] : m[u + 1], 1);
            const int r = 16 * q + u + odd, c = j & ~1;
            if (odd)
            {
                st2(Mg + r * CH + c, other, mine);
                st2(Mb + r * SCC + c, other * ob, mine * sb);
                st2(Mk + r * SCC + c, other * ok * oe, mine * kj * ej);
            }
            else
            {
                st2(Mg + r * CH + c, mine, other);
                st2(Mb + r * SCC + c, mine * sb, other * ob);
                st2(Mk + r * SCC + c, mine * kj * ej, other * ok * oe);
            }
        }
    }
    cp_wait<0>();
    __syncthreads();
    const size_t row0 = (size_t)hd.bh * Tp + t0;
    // U and W leave through the operand's own region (V's, then K's) once every warp has read it
    auto product = [&](const bf16r* Mx, bf16r* X, bf16r* out) {
        StagedOut<D> so;
#pragma unroll
        for (int e = 0; e < StagedOut<D>::PER; ++e)
        {
            const int t = (threadIdx.x >> 5) + e * NW, r0 = (t / StagedOut<D>::TN) * 16, c0 = (t % StagedOut<D>::TN) * 32;
            float acc[4][4];
            zero(acc);
            wmma<4, false, false>(acc, Mx, SCC, X, SD, r0, c0, CH);
            so.put(e, acc);
        }
        __syncthreads();
        so.write(X);
        __syncthreads();
        StagedOut<D>::copy(X, out + row0 * D, CH);
    };
    product(Mb, Vs, U);
    product(Mk, Ks, W);
}

// The slice of h (D × BV, columns v0…) that one warp holds in registers across chunks: a 16-row band, HW 8-column tiles.
template <int D> struct SliceB
{
    static constexpr int HW = (D / 16) * (BV / 8) / NW;   // 4 at D = 128, 2 at D = 64
    int r0, c0;
    __device__ SliceB() { int w = threadIdx.x >> 5; r0 = (w % (D / 16)) * 16; c0 = (w / (D / 16)) * 8 * HW; }
};

// (COMBA_STAGED_STATE, a candidate: the state passes' per-chunk stores through it)
// rows × BV bf16 from a shared slice (stride SBV) to global rows of D at out, in 16-byte pieces: a warp's 4-byte
// stores of an mma tile fill only part of each 32-byte sector they touch. Flip negates every value (exactly: bf16's
// rounding is symmetric, so the bits of −x's rounding, flipped, are x's rounding).
template <int D, bool Flip = false>
__device__ __forceinline__ void slice_out(const bf16r* X, bf16r* out, int rows)
{
    auto piece = [&](int r, int c) {
        uint4 x = *reinterpret_cast<const uint4*>(X + r * SBV + c);
        if (Flip) x.x ^= 0x80008000u, x.y ^= 0x80008000u, x.z ^= 0x80008000u, x.w ^= 0x80008000u;
        *reinterpret_cast<uint4*>(out + (size_t)r * D + c) = x;
    };
#ifdef COMBA_UNROLLED_STAGE
    each_piece<BV / 8>(rows, [&](int r, int j) { piece(r, j * 8); });
#else
    for (int idx = threadIdx.x; idx < rows * (BV / 8); idx += NT) piece(idx / (BV / 8), (idx % (BV / 8)) * 8);
#endif
}

// grid (D/BV, B·H): the sequential pass, the next chunk's W, K, U and g prefetched while this one computes.
template <int D>
__device__ void fwd_state_b(const bf16r* k, const float* g, const bf16r* W, const bf16r* U, const float* h0,
                            bf16r* Ut, bf16r* H0, float* hT, int H, int Hkv, int T, int N)
{
    extern __shared__ float4 smq[];
    unsigned char* smb = reinterpret_cast<unsigned char*>(smq);
    constexpr int SD = D + 8, BUF = 2 * CH * SD + CH * SBV;
    const int v0 = blockIdx.x * BV, Tp = N * CH, lane = threadIdx.x & 31;
    HeadB hd(blockIdx.y, H, Hkv);
    bf16r* buf = (bf16r*)smb;                 // 2 × [W | K | U slice]
    bf16r* hb = buf + 2 * BUF;                // D × BV, bf16 copy of h
    bf16r* Xs = hb + D * SBV;                  // CH × BV: e^{γ_C − γ} ⊙ Ũ
    float* gam = (float*)(Xs + CH * SBV);
    float* gam0 = gam + CH;
    auto fetch = [&](int n) {
        bf16r* b = buf + (n & 1) * BUF;
        const size_t r = (size_t)hd.bh * Tp + n * CH;
        stage_b<D>(b, SD, W + r * D, D, CH, CH);
        stage_b<D>(b + CH * SD, SD, k + (hd.kv(Hkv, T) + n * CH) * D, D, CH, T - n * CH);
        stage_b<BV>(b + 2 * CH * SD, SBV, U + r * D + v0, D, CH, CH);
        cp_commit();
    };
    auto gfetch = [&](int n, float& a, float& b) {
        int t = n * CH + 2 * lane;
        a = t < T ? g[hd.q(T) + t] : 0.f;
        b = t + 1 < T ? g[hd.q(T) + t + 1] : 0.f;
    };
    SliceB<D> sl;
    constexpr int HW = SliceB<D>::HW;
    float h[HW][4];
    each2(h, sl.r0, sl.c0, [&](int r, int c, float& x0, float& x1) {
        x0 = h0 ? h0[(size_t)hd.bh * D * D + r * D + v0 + c] : 0.f;
        x1 = h0 ? h0[(size_t)hd.bh * D * D + r * D + v0 + c + 1] : 0.f;
    });
    fetch(0);
    float ga = 0.f, gb = 0.f;
    if (threadIdx.x < 32) gfetch(0, ga, gb);
#ifdef COMBA_TWO_CHUNK_LOOP
#pragma unroll 2   // (a candidate) the double buffer's parity becomes a constant in each copy of the loop body
#endif
    for (int n = 0; n < N; ++n)
    {
        const bf16r* Wc = buf + (n & 1) * BUF;
        const bf16r* Kc = Wc + CH * SD;
#ifdef COMBA_STAGED_STATE
        bf16r* Uc = buf + (n & 1) * BUF + 2 * CH * SD;
        each2(h, sl.r0, sl.c0, [&](int r, int c, float x0, float x1) { st2(hb + r * SBV + c, x0, x1); });
#else
        const bf16r* Uc = Kc + CH * SD;
        bf16r* Hn = H0 + ((size_t)hd.bh * N + n) * D * D;
        each2(h, sl.r0, sl.c0, [&](int r, int c, float x0, float x1) {
            st2(hb + r * SBV + c, x0, x1);
            st2(Hn + r * D + v0 + c, x0, x1);
        });
#endif
        if (threadIdx.x < 32)
        {
            scan_pairs(ga, gb, gam, gam0);
            if (n + 1 < N) gfetch(n + 1, ga, gb);
        }
        cp_wait<0>();
        __syncthreads();
        if (n + 1 < N) fetch(n + 1);
        const float gC = gam[CH - 1], aC = expf(gC);
        const size_t row0 = (size_t)hd.bh * Tp + n * CH;
#ifdef COMBA_STAGED_STATE
        slice_out<D>(hb, H0 + ((size_t)hd.bh * N + n) * D * D + v0, D);   // the chunk-start state, as bf16
        // Ũ over U in its own tile (each pair read and written by one thread), stored from there after the barrier
        bmm<CH, BV, false, false>(Wc, SD, hb, SBV, D, [&](int i, int c, float x0, float x1) {
            float2 u = ld2(Uc + i * SBV + c);
            float u0 = u.x - x0, u1 = u.y - x1, e = expf(gC - gam[i]);
            st2(Uc + i * SBV + c, u0, u1);
            st2(Xs + i * SBV + c, e * u0, e * u1);
        });
        __syncthreads();
        slice_out<D>(Uc, Ut + row0 * D + v0, CH);
#else
        bmm<CH, BV, false, false>(Wc, SD, hb, SBV, D, [&](int i, int c, float x0, float x1) {
            float2 u = ld2(Uc + i * SBV + c);
            float u0 = u.x - x0, u1 = u.y - x1, e = expf(gC - gam[i]);
            st2(Ut + (row0 + i) * D + v0 + c, u0, u1);
            st2(Xs + i * SBV + c, e * u0, e * u1);
        });
        __syncthreads();
#endif
#pragma unroll
        for (int w = 0; w < HW; ++w) h[w][0] *= aC, h[w][1] *= aC, h[w][2] *= aC, h[w][3] *= aC;
        wmma<HW, true, false>(h, Kc, SD, Xs, SBV, sl.r0, sl.c0, CH);
    }
    if (hT)
        each2(h, sl.r0, sl.c0, [&](int r, int c, float x0, float x1) {
            hT[(size_t)hd.bh * D * D + r * D + v0 + c] = x0;
            hT[(size_t)hd.bh * D * D + r * D + v0 + c + 1] = x1;
        });
}

// grid (N, B·H): O = s [e^{γ} ⊙ (Q h) + S Ũ], S = (Q Kᵀ) ⊙ e^{γ_i − γ_j} ⊙ causal.
template <int D>
__device__ void fwd_output_b(const bf16r* q, const bf16r* k, const float* g, const bf16r* Ut, const bf16r* H0,
                             bf16r* o, float scale, int H, int Hkv, int T)
{
    extern __shared__ float4 smq[];
    unsigned char* smb = reinterpret_cast<unsigned char*>(smq);
    constexpr int SD = D + 8;
    const int n = blockIdx.x, N = gridDim.x, t0 = n * CH, Tp = N * CH;
    HeadB hd(blockIdx.y, H, Hkv);
    bf16r* Qs = (bf16r*)smb;
    bf16r* Ks = Qs + CH * SD;
    bf16r* Us = Ks + CH * SD;
    bf16r* Hs = Us + CH * SD;
    bf16r* Sb = Hs + D * SD;
    float* gam = (float*)(Sb + CH * SCC);
    float* gam0 = gam + CH;
    stage_b<D>(Qs, SD, q + (hd.q(T) + t0) * D, D, CH, T - t0);
    stage_b<D>(Ks, SD, k + (hd.kv(Hkv, T) + t0) * D, D, CH, T - t0);
    cp_commit();
    stage_b<D>(Us, SD, Ut + ((size_t)hd.bh * Tp + t0) * D, D, CH, CH);
    stage_b<D>(Hs, SD, H0 + ((size_t)hd.bh * N + n) * D * D, D, D, D);
    cp_commit();
    gates_b(gam, gam0, nullptr, nullptr, g, nullptr, nullptr, hd.q(T), t0, T);
    cp_wait<1>();
    __syncthreads();
    bmm<CH, CH, false, true>(Qs, SD, Ks, SD, D, [&](int i, int j, float x0, float x1) {
        st2(Sb + i * SCC + j, j <= i ? x0 * expf(gam[i] - gam[j]) : 0.f, j + 1 <= i ? x1 * expf(gam[i] - gam[j + 1]) : 0.f);
    });
    cp_wait<0>();
    __syncthreads();
    bf16r* O = o + (hd.q(T) + t0) * D;
    auto tile = [&](int r0, int c0, float (&acc)[4][4]) {
        zero(acc);
        wmma<4, false, false>(acc, Qs, SD, Hs, SD, r0, c0, D);
        const int l = threadIdx.x & 31;
        const float e0 = expf(gam[r0 + (l >> 2)]), e1 = expf(gam[r0 + (l >> 2) + 8]);
#pragma unroll
        for (int w = 0; w < 4; ++w) acc[w][0] *= e0, acc[w][1] *= e0, acc[w][2] *= e1, acc[w][3] *= e1;
        wmma<4, false, false>(acc, Sb, SCC, Us, SD, r0, c0, CH);
    };
    // O leaves through Q's region once every warp has read it
    StagedOut<D> so;
#pragma unroll
    for (int e = 0; e < StagedOut<D>::PER; ++e)
    {
        const int t = (threadIdx.x >> 5) + e * NW;
        float acc[4][4];
        tile((t / StagedOut<D>::TN) * 16, (t % StagedOut<D>::TN) * 32, acc);
        so.put(e, acc, scale);
    }
    __syncthreads();
    so.write(Qs);
    __syncthreads();
    StagedOut<D>::copy(Qs, O, T - t0);
}

// ── backward ──
// grid (N, B·H): dUp = s Sᵀ dO (float32).
template <int D>
__device__ void bwd_dupart_b(const bf16r* q, const bf16r* k, const float* g, const bf16r* dO, float* dUp, float scale,
                             int H, int Hkv, int T)
{
    extern __shared__ float4 smq[];
    unsigned char* smb = reinterpret_cast<unsigned char*>(smq);
    constexpr int SD = D + 8;
    const int n = blockIdx.x, N = gridDim.x, t0 = n * CH, Tp = N * CH;
    HeadB hd(blockIdx.y, H, Hkv);
    bf16r* Qs = (bf16r*)smb;
    bf16r* Ks = Qs + CH * SD;
    bf16r* Os = Ks + CH * SD;
    bf16r* Sb = Os + CH * SD;
    float* gam = (float*)(Sb + CH * SCC);
    float* gam0 = gam + CH;
    stage_b<D>(Qs, SD, q + (hd.q(T) + t0) * D, D, CH, T - t0);
    stage_b<D>(Ks, SD, k + (hd.kv(Hkv, T) + t0) * D, D, CH, T - t0);
    stage_b<D>(Os, SD, dO + (hd.q(T) + t0) * D, D, CH, T - t0);
    cp_commit();
    gates_b(gam, gam0, nullptr, nullptr, g, nullptr, nullptr, hd.q(T), t0, T);
    cp_wait<0>();
    __syncthreads();
    bmm<CH, CH, false, true>(Qs, SD, Ks, SD, D, [&](int i, int j, float x0, float x1) {
        st2(Sb + i * SCC + j, j <= i ? x0 * expf(gam[i] - gam[j]) : 0.f, j + 1 <= i ? x1 * expf(gam[i] - gam[j + 1]) : 0.f);
    });
    __syncthreads();
    float* out = dUp + ((size_t)hd.bh * Tp + t0) * D;
    bmm<CH, D, true, false>(Sb, SCC, Os, SD, CH, [&](int j, int c, float x0, float x1) {
        *reinterpret_cast<float2*>(out + j * D + c) = f2(scale * x0, scale * x1);
    });
}

// grid (D/BV, B·H), chunks in reverse: dŨ = dUp + e^{γ_C − γ} ⊙ (K dh'), dh ← e^{γ_C} dh' + Qᵀ(s e^{γ} ⊙ dO) − Wᵀ dŨ.
// The previous chunk's tiles and g are prefetched while this one computes.
template <int D>
__device__ void bwd_state_b(const bf16r* q, const bf16r* k, const float* g, const bf16r* W, const bf16r* dO,
                            const float* dUp, const float* dhT, bf16r* dUt, bf16r* dH1, float* dh0, float scale,
                            int H, int Hkv, int T, int N)
{
    extern __shared__ float4 smq[];
    unsigned char* smb = reinterpret_cast<unsigned char*>(smq);
    constexpr int SD = D + 8, BUF = 3 * CH * SD + CH * SBV + CH * BV * 2;   // bf16 units; the float slice is 2 each
    const int v0 = blockIdx.x * BV, Tp = N * CH, lane = threadIdx.x & 31;
    HeadB hd(blockIdx.y, H, Hkv);
    bf16r* buf = (bf16r*)smb;                 // 2 × [K | Q | W | dO slice | dUp slice (float)]
    bf16r* hb = buf + 2 * BUF;                // D × BV: dh' in bf16
    bf16r* Xd = hb + D * SBV;                 // s e^{γ} ⊙ dO slice
    bf16r* Xu = Xd + CH * SBV;                // −dŨ slice
    float* gam = (float*)(Xu + CH * SBV);
    float* gam0 = gam + CH;
    // the buffer chunk n uses: n's parity, or under COMBA_TWO_CHUNK_LOOP the parity of its step count from the end,
    // which is a constant in each of the loop body's two copies (n's parity is not, since N's is not known)
#ifdef COMBA_TWO_CHUNK_LOOP
    auto slot = [&](int n) { return (N - 1 - n) & 1; };
#else
    auto slot = [&](int n) { return n & 1; };
#endif
    auto fetch = [&](int n) {
        bf16r* b = buf + slot(n) * BUF;
        const int t0 = n * CH;
        const size_t r = (size_t)hd.bh * Tp + t0;
        stage_b<D>(b, SD, k + (hd.kv(Hkv, T) + t0) * D, D, CH, T - t0);
        stage_b<D>(b + CH * SD, SD, q + (hd.q(T) + t0) * D, D, CH, T - t0);
        stage_b<D>(b + 2 * CH * SD, SD, W + r * D, D, CH, CH);
        stage_b<BV>(b + 3 * CH * SD, SBV, dO + (hd.q(T) + t0) * D + v0, D, CH, T - t0);
        stage_f<BV>((float*)(b + 3 * CH * SD + CH * SBV), BV, dUp + r * D + v0, D, CH);
        cp_commit();
    };
    auto gfetch = [&](int n, float& a, float& b) {
        int t = n * CH + 2 * lane;
        a = t < T ? g[hd.q(T) + t] : 0.f;
        b = t + 1 < T ? g[hd.q(T) + t + 1] : 0.f;
    };
    SliceB<D> sl;
    constexpr int HW = SliceB<D>::HW;
    float h[HW][4];
    each2(h, sl.r0, sl.c0, [&](int r, int c, float& x0, float& x1) {
        x0 = dhT ? dhT[(size_t)hd.bh * D * D + r * D + v0 + c] : 0.f;
        x1 = dhT ? dhT[(size_t)hd.bh * D * D + r * D + v0 + c + 1] : 0.f;
    });
    fetch(N - 1);
    float ga = 0.f, gb = 0.f;
    if (threadIdx.x < 32) gfetch(N - 1, ga, gb);
#ifdef COMBA_TWO_CHUNK_LOOP
#pragma unroll 2   // (a candidate) the double buffer's slot becomes a constant in each copy of the loop body
    for (int m = 0; m < N; ++m)
    {
        const int n = N - 1 - m;
#else
    for (int n = N - 1; n >= 0; --n)
    {
#endif
        const bf16r* Kc = buf + slot(n) * BUF;
        const bf16r* Qc = Kc + CH * SD;
        const bf16r* Wc = Qc + CH * SD;
        const bf16r* Oc = Wc + CH * SD;
        const float* Pc = (const float*)(Oc + CH * SBV);
#ifdef COMBA_STAGED_STATE
        each2(h, sl.r0, sl.c0, [&](int r, int c, float x0, float x1) { st2(hb + r * SBV + c, x0, x1); });
#else
        bf16r* Hn = dH1 + ((size_t)hd.bh * N + n) * D * D;
        each2(h, sl.r0, sl.c0, [&](int r, int c, float x0, float x1) {
            st2(hb + r * SBV + c, x0, x1);
            st2(Hn + r * D + v0 + c, x0, x1);
        });
#endif
        if (threadIdx.x < 32)
        {
            scan_pairs(ga, gb, gam, gam0);
            if (n > 0) gfetch(n - 1, ga, gb);
        }
        cp_wait<0>();
        __syncthreads();
        if (n > 0) fetch(n - 1);
        const float gC = gam[CH - 1], aC = expf(gC);
        const size_t row0 = (size_t)hd.bh * Tp + n * CH;
#ifdef COMBA_STAGED_STATE
        slice_out<D>(hb, dH1 + ((size_t)hd.bh * N + n) * D * D + v0, D);   // dh' as bf16
#endif
#ifdef COMBA_UNROLLED_STAGE
        each_piece<BV / 2>(CH, [&](int i, int j) {
            float2 x = ld2(Oc + i * SBV + 2 * j);
            float e = scale * expf(gam[i]);
            st2(Xd + i * SBV + 2 * j, e * x.x, e * x.y);
        });
#else
        for (int idx = threadIdx.x; idx < CH * BV / 2; idx += NT)
        {
            int i = idx / (BV / 2), c = 2 * (idx % (BV / 2));
            float2 x = ld2(Oc + i * SBV + c);
            float e = scale * expf(gam[i]);
            st2(Xd + i * SBV + c, e * x.x, e * x.y);
        }
#endif
        bmm<CH, BV, false, false>(Kc, SD, hb, SBV, D, [&](int i, int c, float x0, float x1) {
            float e = expf(gC - gam[i]);
            float2 p = *reinterpret_cast<const float2*>(Pc + i * BV + c);
            float d0 = p.x + e * x0, d1 = p.y + e * x1;
#ifndef COMBA_STAGED_STATE
            st2(dUt + (row0 + i) * D + v0 + c, d0, d1);
#endif
            st2(Xu + i * SBV + c, -d0, -d1);
        });
        __syncthreads();
#ifdef COMBA_STAGED_STATE
        slice_out<D, true>(Xu, dUt + row0 * D + v0, CH);   // dŨ = −Xu
#endif
#pragma unroll
        for (int w = 0; w < HW; ++w) h[w][0] *= aC, h[w][1] *= aC, h[w][2] *= aC, h[w][3] *= aC;
        wmma<HW, true, false>(h, Qc, SD, Xd, SBV, sl.r0, sl.c0, CH);
        wmma<HW, true, false>(h, Wc, SD, Xu, SBV, sl.r0, sl.c0, CH);
    }
    if (dh0)
        each2(h, sl.r0, sl.c0, [&](int r, int c, float x0, float x1) {
            dh0[(size_t)hd.bh * D * D + r * D + v0 + c] = x0;
            dh0[(size_t)hd.bh * D * D + r * D + v0 + c + 1] = x1;
        });
}

// grid (N, B·H): every per-chunk gradient (dk, dv per query head, bf16; the caller sums a KV head's group).
template <int D>
__device__ void bwd_local_b(const bf16r* q, const bf16r* k, const bf16r* v, const float* g, const float* beta,
                            const float* kappa, const bf16r* Msave, const bf16r* Ut, const bf16r* H0, const bf16r* dH1,
                            const bf16r* dUt, const bf16r* dO, bf16r* dq, bf16r* dk, bf16r* dv, float* dg, float* dbeta,
                            float* dkappa, float scale, int H, int Hkv, int T)
{
    extern __shared__ float4 smq[];
    unsigned char* smb = reinterpret_cast<unsigned char*>(smq);
    constexpr int SD = D + 8;
    const int n = blockIdx.x, N = gridDim.x, t0 = n * CH, Tp = N * CH;
    HeadB hd(blockIdx.y, H, Hkv);
    bf16r* Ks = (bf16r*)smb;
    bf16r* Qs = Ks + CH * SD;
    bf16r* dUs = Qs + CH * SD;      // dŨ
    bf16r* Us = dUs + CH * SD;      // Ũ
    bf16r* Os = Us + CH * SD;       // dO
    bf16r* Vb = Os + CH * SD;       // dVβ
    bf16r* Hs = Vb + CH * SD;       // h, D × D
    bf16r* dHs = Hs + D * SD;       // dh'
    bf16r* Ms = dHs + D * SD;       // M
    bf16r* Pb = Ms + CH * SCC;      // P = s (dO Ũᵀ) ⊙ E, causal
    bf16r* GG = Pb + CH * SCC;      // G + Gᵀ
    float* KK = (float*)(GG + CH * SCC);
    float* gam = KK + CH * SCF;
    float *gam0 = gam + CH, *bet = gam0 + CH, *kap = bet + CH;
    float *dgam = kap + CH, *dgam0 = dgam + CH, *dkap = dgam0 + CH, *dbet = dkap + CH;
    float* red = dbet + CH;
    const size_t rq = hd.q(T) + t0, rk = hd.kv(Hkv, T) + t0, ri = (size_t)hd.bh * Tp + t0;
    const size_t st = ((size_t)hd.bh * N + n) * D * D;
    stage_b<D>(Ks, SD, k + rk * D, D, CH, T - t0);
    stage_b<D>(Qs, SD, q + rq * D, D, CH, T - t0);
    stage_b<CH>(Ms, SCC, Msave + ((size_t)hd.bh * N + n) * CH * CH, CH, CH, CH);
    cp_commit();
    stage_b<D>(dUs, SD, dUt + ri * D, D, CH, CH);
    stage_b<D>(Us, SD, Ut + ri * D, D, CH, CH);
    stage_b<D>(Os, SD, dO + rq * D, D, CH, T - t0);
    cp_commit();
    stage_b<D>(Hs, SD, H0 + st, D, D, D);
    stage_b<D>(dHs, SD, dH1 + st, D, D, D);
    cp_commit();
    if (threadIdx.x < CH) dgam[threadIdx.x] = dgam0[threadIdx.x] = dkap[threadIdx.x] = dbet[threadIdx.x] = 0.f;
    if (threadIdx.x == 0) red[0] = 0.f;
    gates_b(gam, gam0, bet, kap, g, beta, kappa, hd.q(T), t0, T);
    cp_wait<2>();
    __syncthreads();
    // K Kᵀ, strictly lower, raw
    bmm<CH, CH, false, true>(Ks, SD, Ks, SD, D, [&](int i, int j, float x0, float x1) {
        KK[i * SCF + j] = j < i ? x0 : 0.f;
        KK[i * SCF + j + 1] = j + 1 < i ? x1 : 0.f;
    });
    cp_wait<1>();
    __syncthreads();
    // dVβ = Mᵀ dŨ;  dv = β dVβ;  dβ_j = ⟨dVβ_j, V_j⟩
    const bf16r* V = v + rk * D;
    tiles<CH, D, 4>([&](int r0, int c0) {
        float acc[4][4];
        zero(acc);
        wmma<4, true, false>(acc, Ms, SCC, dUs, SD, r0, c0, CH);
        const int l = threadIdx.x & 31, j0 = r0 + (l >> 2);
        float s0 = 0.f, s1 = 0.f;
        each2(acc, r0, c0, [&](int j, int c, float x0, float x1) {
            st2(Vb + j * SD + c, x0, x1);
            if (t0 + j < T)
            {
                st2(dv + (rq + j) * D + c, bet[j] * x0, bet[j] * x1);
                float2 vv = ld2(V + (size_t)j * D + c);
                (j == j0 ? s0 : s1) += x0 * vv.x + x1 * vv.y;
            }
        });
        s0 = quad_sum(s0), s1 = quad_sum(s1);
        if ((l & 3) == 0) sadd(&dbet[j0], s0), sadd(&dbet[j0 + 8], s1);
    });
    // P_ij = s ⟨dO_i, Ũ_j⟩ e^{γ_i − γ_j}, j ≤ i
    bmm<CH, CH, false, true>(Os, SD, Us, SD, D, [&](int i, int j, float x0, float x1) {
        st2(Pb + i * SCC + j, j <= i ? scale * x0 * expf(gam[i] - gam[j]) : 0.f,
            j + 1 <= i ? scale * x1 * expf(gam[i] - gam[j + 1]) : 0.f);
    });
    __syncthreads();
    // y = P ⊙ (Q Kᵀ): dγ_i += Σ_j y_ij, dγ_j −= Σ_i y_ij
    tiles<CH, CH, 4>([&](int r0, int c0) {
        float acc[4][4];
        zero(acc);
        wmma<4, false, true>(acc, Qs, SD, Ks, SD, r0, c0, D);
        const int l = threadIdx.x & 31, i0 = r0 + (l >> 2), i1 = i0 + 8;
        float s0 = 0.f, s1 = 0.f;
#pragma unroll
        for (int w = 0; w < 4; ++w)
        {
            const int c = c0 + 8 * w + 2 * (l & 3);
            float2 p = ld2(Pb + i0 * SCC + c), r = ld2(Pb + i1 * SCC + c);
            float y00 = p.x * acc[w][0], y01 = p.y * acc[w][1], y10 = r.x * acc[w][2], y11 = r.y * acc[w][3];
            s0 += y00 + y01;
            s1 += y10 + y11;
            float c0s = col_sum(y00 + y10), c1s = col_sum(y01 + y11);
            if (l < 4) sadd(&dgam[c], -c0s), sadd(&dgam[c + 1], -c1s);
        }
        s0 = quad_sum(s0), s1 = quad_sum(s1);
        if ((l & 3) == 0) sadd(&dgam[i0], s0), sadd(&dgam[i1], s1);
    });
    // dA = −dVβ Ũᵀ (strictly lower); from A_ij = κ_i KK_ij e^{γ⁰_i − γ_j}: dκ_i, dγ⁰_i, dγ_j, and G = dA κ_i e^{γ⁰_i − γ_j}
    tiles<CH, CH, 4>([&](int r0, int c0) {
        float acc[4][4];
        zero(acc);
        wmma<4, false, true>(acc, Vb, SD, Us, SD, r0, c0, D);
        const int l = threadIdx.x & 31;
        float rk[2] = {0.f, 0.f}, rg[2] = {0.f, 0.f};
#pragma unroll
        for (int w = 0; w < 4; ++w)
        {
            float cs[2] = {0.f, 0.f};
#pragma unroll
            for (int e = 0; e < 4; ++e)
            {
                const int i = r0 + (l >> 2) + 8 * (e >> 1), j = c0 + 8 * w + 2 * (l & 3) + (e & 1);
                if (j < i)
                {
                    float da = -acc[w][e], ex = expf(gam0[i] - gam[j]), kk = KK[i * SCF + j];
                    float a = kap[i] * kk * ex;
                    rk[e >> 1] += da * kk * ex;
                    rg[e >> 1] += da * a;
                    cs[e & 1] += da * a;
                    bf16r b = f2bf(da * kap[i] * ex);
                    GG[i * SCC + j] = b;
                    GG[j * SCC + i] = b;
                }
                else if (j == i) GG[i * SCC + i] = 0;
            }
            const int c = c0 + 8 * w + 2 * (l & 3);
            float c0s = col_sum(cs[0]), c1s = col_sum(cs[1]);
            if (l < 4) sadd(&dgam[c], -c0s), sadd(&dgam[c + 1], -c1s);
        }
        const int i0 = r0 + (l >> 2);
#pragma unroll
        for (int h = 0; h < 2; ++h)
        {
            float a = quad_sum(rk[h]), b = quad_sum(rg[h]);
            if ((l & 3) == 0) sadd(&dkap[i0 + 8 * h], a), sadd(&dgam0[i0 + 8 * h], b);
        }
    });
    cp_wait<0>();
    __syncthreads();
    // dq = s e^{γ} ⊙ (dO hᵀ) + P K;   dγ_i += ⟨Q_i, s e^{γ_i} (dO hᵀ)_i⟩
    tiles<CH, D, 4>([&](int r0, int c0) {
        float acc[4][4];
        zero(acc);
        wmma<4, false, true>(acc, Os, SD, Hs, SD, r0, c0, D);
        const int l = threadIdx.x & 31, i0 = r0 + (l >> 2), i1 = i0 + 8;
        const float e0 = scale * expf(gam[i0]), e1 = scale * expf(gam[i1]);
        float s0 = 0.f, s1 = 0.f;
#pragma unroll
        for (int w = 0; w < 4; ++w)
        {
            acc[w][0] *= e0, acc[w][1] *= e0, acc[w][2] *= e1, acc[w][3] *= e1;
            const int c = c0 + 8 * w + 2 * (l & 3);
            float2 a = ld2(Qs + i0 * SD + c), b = ld2(Qs + i1 * SD + c);
            s0 += a.x * acc[w][0] + a.y * acc[w][1];
            s1 += b.x * acc[w][2] + b.y * acc[w][3];
        }
        s0 = quad_sum(s0), s1 = quad_sum(s1);
        if ((l & 3) == 0) sadd(&dgam[i0], s0), sadd(&dgam[i1], s1);
        wmma<4, false, false>(acc, Pb, SCC, Ks, SD, r0, c0, CH);
        each2(acc, r0, c0, [&](int i, int c, float x0, float x1) {
            if (t0 + i < T) st2(dq + (rq + i) * D + c, x0, x1);
        });
    });
    // dk = (G + Gᵀ) K + Pᵀ Q − κ e^{γ⁰} ⊙ (dVβ hᵀ) + e^{γ_C − γ} ⊙ (Ũ dh'ᵀ)
    //   r_j = −e^{γ⁰_j} ⟨(dVβ hᵀ)_j, K_j⟩ feeds dκ_j and dγ⁰_j;  t_i = ⟨dK̃_i, K_i⟩ feeds dγ_i (−) and dγ_C (+)
    const float gC = gam[CH - 1];
    tiles<CH, D, 4>([&](int r0, int c0) {
        const int l = threadIdx.x & 31, i0 = r0 + (l >> 2), i1 = i0 + 8;
        float acc[4][4], t[4][4];
        zero(acc);
        wmma<4, false, false>(acc, GG, SCC, Ks, SD, r0, c0, CH);
        wmma<4, true, false>(acc, Pb, SCC, Qs, SD, r0, c0, CH);
        zero(t);
        wmma<4, false, true>(t, Vb, SD, Hs, SD, r0, c0, D);
        {
            const float a0 = kap[i0] * expf(gam0[i0]), a1 = kap[i1] * expf(gam0[i1]);
            float s0 = 0.f, s1 = 0.f;
#pragma unroll
            for (int w = 0; w < 4; ++w)
            {
                const int c = c0 + 8 * w + 2 * (l & 3);
                float2 a = ld2(Ks + i0 * SD + c), b = ld2(Ks + i1 * SD + c);
                s0 += a.x * t[w][0] + a.y * t[w][1];
                s1 += b.x * t[w][2] + b.y * t[w][3];
                acc[w][0] -= a0 * t[w][0], acc[w][1] -= a0 * t[w][1], acc[w][2] -= a1 * t[w][2], acc[w][3] -= a1 * t[w][3];
            }
            s0 = quad_sum(s0), s1 = quad_sum(s1);
            float r0_ = -expf(gam0[i0]) * s0, r1_ = -expf(gam0[i1]) * s1;
            if ((l & 3) == 0)
            {
                sadd(&dkap[i0], r0_);
                sadd(&dgam0[i0], kap[i0] * r0_);
                sadd(&dkap[i1], r1_);
                sadd(&dgam0[i1], kap[i1] * r1_);
            }
        }
        zero(t);
        wmma<4, false, true>(t, Us, SD, dHs, SD, r0, c0, D);
        {
            const float e0 = expf(gC - gam[i0]), e1 = expf(gC - gam[i1]);
            float s0 = 0.f, s1 = 0.f;
#pragma unroll
            for (int w = 0; w < 4; ++w)
            {
                const int c = c0 + 8 * w + 2 * (l & 3);
                t[w][0] *= e0, t[w][1] *= e0, t[w][2] *= e1, t[w][3] *= e1;
                float2 a = ld2(Ks + i0 * SD + c), b = ld2(Ks + i1 * SD + c);
                s0 += a.x * t[w][0] + a.y * t[w][1];
                s1 += b.x * t[w][2] + b.y * t[w][3];
                acc[w][0] += t[w][0], acc[w][1] += t[w][1], acc[w][2] += t[w][2], acc[w][3] += t[w][3];
            }
            s0 = quad_sum(s0), s1 = quad_sum(s1);
            if ((l & 3) == 0) sadd(&dgam[i0], -s0), sadd(&dgam[i1], -s1);
            float st_ = col_sum(s0 + s1);   // the quads' sums, over the warp's 8 row pairs
            if (l == 0) sadd(red, st_);
        }
        each2(acc, r0, c0, [&](int i, int c, float x0, float x1) {
            if (t0 + i < T) st2(dk + (rq + i) * D + c, x0, x1);
        });
    });
    // dγ_C += e^{γ_C} ⟨h, dh'⟩
    {
        float s = 0.f;
        for (int idx = threadIdx.x; idx < D * D / 2; idx += NT)
        {
            int r = idx / (D / 2), c = 2 * (idx % (D / 2));
            float2 a = ld2(Hs + r * SD + c), b = ld2(dHs + r * SD + c);
            s += a.x * b.x + a.y * b.y;
        }
        for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
        if ((threadIdx.x & 31) == 0) sadd(red, expf(gC) * s);
    }
    __syncthreads();
    // dg_t = Σ_{i≥t} dγ_i + Σ_{i>t} dγ⁰_i + dγ_C
    if (threadIdx.x == 0)
    {
        float acc = red[0];
        for (int i = CH - 1; i >= 0; --i)
        {
            acc += dgam[i];
            if (t0 + i < T)
            {
                dg[rq + i] = acc;
                dkappa[rq + i] = dkap[i];
                dbeta[rq + i] = dbet[i];
            }
            acc += dgam0[i];
        }
    }
}

// q and k are read, and dq and dk written, through element strides (batch, head, time; the head dim contiguous), so
// that the (B, T, H, D) layout the projections make needs no transposing copy; q̃, k̂ and their gradients are
// (B, H, T, D) contiguous, row = (b·Hkv + hk)·T + t for k̂ and (b·H + h)·T + t for q̃.
#define NORM_STRIDES long long qsb, long long qsh, long long qst, long long ksb, long long ksh, long long kst

template <int D>
__device__ void norm_fwd_b(const bf16r* q, const bf16r* k, const float* d, const float* cs, const float* sn, bf16r* qt,
                           bf16r* kh, int H, int Hkv, int T, int rows, NORM_STRIDES)
{
    constexpr int E = D / 32;
    const int row = blockIdx.x * NW + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    const int t = row % T, bk = row / T, b = bk / Hkv, hk = bk % Hkv, G = H / Hkv;
    float x[E], y[E];
    ldE<E>(x, k + b * ksb + hk * ksh + t * kst + lane * E);
    // the next q row's load is issued before this row's sums, so each warp keeps two rows in flight: with one, 64
    // warps an SM hold about 16 KB of loads, which at DRAM's latency is about 2 TB/s over the GPU
    float yn[E];
    ldE<E>(yn, q + b * qsb + (hk * G) * qsh + t * qst + lane * E);
    rotate<E>(x, cs, sn, t, lane, false);
    const float ik = 1.f / fmaxf(sqrtf(dotE<E>(x, x)), NORM_FLOOR);
#pragma unroll
    for (int e = 0; e < E; ++e) x[e] *= ik;
    stE<E>(kh + (size_t)row * D + lane * E, x);
    for (int gi = 0; gi < G; ++gi)
    {
        const int h = hk * G + gi;
        const size_t r = ((size_t)b * H + h) * T + t;
#pragma unroll
        for (int e = 0; e < E; ++e) y[e] = yn[e];
        if (gi + 1 < G) ldE<E>(yn, q + b * qsb + (h + 1) * qsh + t * qst + lane * E);
        rotate<E>(y, cs, sn, t, lane, false);
        const float iq = 1.f / fmaxf(sqrtf(dotE<E>(y, y)), NORM_FLOOR), dh = d[h];
#pragma unroll
        for (int e = 0; e < E; ++e) y[e] = y[e] * iq - dh * x[e];
        stE<E>(qt + r * D + lane * E, y);
    }
}

// dq_h = J(q_h) dq̃_h;  dk = J(k) Σ_h (dk̂_h − d_h dq̃_h);  ddp_h = −⟨dq̃_h, k̂⟩ per row (the caller sums over b, t),
// with J(x) y = (y − x̂⟨x̂, y⟩) / |x| where |x| > ε, and y / ε where the floor holds.
template <int D>
__device__ void norm_bwd_b(const bf16r* q, const bf16r* k, const float* d, const float* cs, const float* sn, const bf16r* dqt,
                           const bf16r* dkh, bf16r* dq, bf16r* dk, float* ddp, int H, int Hkv, int T, int rows, NORM_STRIDES)
{
    constexpr int E = D / 32;
    const int row = blockIdx.x * NW + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    const int t = row % T, bk = row / T, b = bk / Hkv, hk = bk % Hkv, G = H / Hkv;
    float kx[E], acc[E], x[E], dy[E], z[E];
    ldE<E>(kx, k + b * ksb + hk * ksh + t * kst + lane * E);
    rotate<E>(kx, cs, sn, t, lane, false);
    const float nk = sqrtf(dotE<E>(kx, kx)), ik = 1.f / fmaxf(nk, NORM_FLOOR);
#pragma unroll
    for (int e = 0; e < E; ++e) kx[e] *= ik, acc[e] = 0.f;
    for (int gi = 0; gi < G; ++gi)
    {
        const int h = hk * G + gi;
        const size_t r = ((size_t)b * H + h) * T + t;
        ldE<E>(x, q + b * qsb + h * qsh + t * qst + lane * E);
        rotate<E>(x, cs, sn, t, lane, false);
        ldE<E>(dy, dqt + r * D + lane * E);
        ldE<E>(z, dkh + r * D + lane * E);
        const float nq = sqrtf(dotE<E>(x, x)), iq = 1.f / fmaxf(nq, NORM_FLOOR), dh = d[h];
        const float dd = -dotE<E>(dy, kx);
        if (lane == 0) ddp[r] = dd;
#pragma unroll
        for (int e = 0; e < E; ++e) acc[e] += z[e] - dh * dy[e], x[e] *= iq;
        const float s = nq > NORM_FLOOR ? dotE<E>(x, dy) : 0.f;
#pragma unroll
        for (int e = 0; e < E; ++e) dy[e] = (dy[e] - x[e] * s) * iq;
        rotate<E>(dy, cs, sn, t, lane, true);
        stE<E>(dq + b * qsb + h * qsh + t * qst + lane * E, dy);
    }
    const float s = nk > NORM_FLOOR ? dotE<E>(kx, acc) : 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] = (acc[e] - kx[e] * s) * ik;
    rotate<E>(acc, cs, sn, t, lane, true);
    stE<E>(dk + b * ksb + hk * ksh + t * kst + lane * E, acc);
}

// names: comba_<stage>_<d>_bf16; fwd_prepare asks for four blocks per SM (at most 64 registers), which its shared
// memory allows at D = 128
#define COMBA_ENTRIES_BF16(D)                                                                                          \
    extern "C" __global__ void __launch_bounds__(NT, 4) comba_fwd_prepare_##D##_bf16(                                 \
        const bf16r* k, const bf16r* v, const float* g, const float* beta, const float* kappa, bf16r* W, bf16r* U,   \
        bf16r* M, int H, int Hkv, int T)                                                                             \
    { fwd_prepare_b<D>(k, v, g, beta, kappa, W, U, M, H, Hkv, T); }                                                  \
    extern "C" __global__ void __launch_bounds__(NT) comba_fwd_state_##D##_bf16(                                      \
        const bf16r* k, const float* g, const bf16r* W, const bf16r* U, const float* h0, bf16r* Ut, bf16r* H0,      \
        float* hT, int H, int Hkv, int T, int N)                                                                     \
    { fwd_state_b<D>(k, g, W, U, h0, Ut, H0, hT, H, Hkv, T, N); }                                                   \
    extern "C" __global__ void __launch_bounds__(NT) comba_fwd_output_##D##_bf16(                                     \
        const bf16r* q, const bf16r* k, const float* g, const bf16r* Ut, const bf16r* H0, bf16r* o, float scale,    \
        int H, int Hkv, int T)                                                                                       \
    { fwd_output_b<D>(q, k, g, Ut, H0, o, scale, H, Hkv, T); }                                                      \
    extern "C" __global__ void __launch_bounds__(NT) comba_bwd_dupart_##D##_bf16(                                     \
        const bf16r* q, const bf16r* k, const float* g, const bf16r* dO, float* dUp, float scale, int H, int Hkv,   \
        int T)                                                                                                       \
    { bwd_dupart_b<D>(q, k, g, dO, dUp, scale, H, Hkv, T); }                                                        \
    extern "C" __global__ void __launch_bounds__(NT) comba_bwd_state_##D##_bf16(                                      \
        const bf16r* q, const bf16r* k, const float* g, const bf16r* W, const bf16r* dO, const float* dUp,          \
        const float* dhT, bf16r* dUt, bf16r* dH1, float* dh0, float scale, int H, int Hkv, int T, int N)             \
    { bwd_state_b<D>(q, k, g, W, dO, dUp, dhT, dUt, dH1, dh0, scale, H, Hkv, T, N); }                               \
    extern "C" __global__ void __launch_bounds__(NT) comba_bwd_local_##D##_bf16(                                      \
        const bf16r* q, const bf16r* k, const bf16r* v, const float* g, const float* beta, const float* kappa,     \
        const bf16r* M, const bf16r* Ut, const bf16r* H0, const bf16r* dH1, const bf16r* dUt, const bf16r* dO,      \
        bf16r* dq, bf16r* dk, bf16r* dv, float* dg, float* dbeta, float* dkappa, float scale, int H, int Hkv, int T) \
    { bwd_local_b<D>(q, k, v, g, beta, kappa, M, Ut, H0, dH1, dUt, dO, dq, dk, dv, dg, dbeta, dkappa, scale, H, Hkv, T); } \
    extern "C" __global__ void __launch_bounds__(NT) comba_norm_fwd_##D##_bf16(                                       \
        const bf16r* q, const bf16r* k, const float* d, const float* cs, const float* sn, bf16r* qt, bf16r* kh,      \
        int H, int Hkv, int T, int rows, NORM_STRIDES)                                                               \
    { norm_fwd_b<D>(q, k, d, cs, sn, qt, kh, H, Hkv, T, rows, qsb, qsh, qst, ksb, ksh, kst); }                                                             \
    extern "C" __global__ void __launch_bounds__(NT) comba_norm_bwd_##D##_bf16(                                       \
        const bf16r* q, const bf16r* k, const float* d, const float* cs, const float* sn, const bf16r* dqt,         \
        const bf16r* dkh, bf16r* dq, bf16r* dk, float* ddp, int H, int Hkv, int T, int rows, NORM_STRIDES)           \
    { norm_bwd_b<D>(q, k, d, cs, sn, dqt, dkh, dq, dk, ddp, H, Hkv, T, rows, qsb, qsh, qst, ksb, ksh, kst); }

#ifndef COMBA_ONLY_FLOAT32
COMBA_ENTRIES_BF16(64)
COMBA_ENTRIES_BF16(128)
#endif
