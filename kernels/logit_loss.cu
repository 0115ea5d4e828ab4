// The chunked logit loss of distillation, one block per row (a sequence position of the batch), in two passes over
// the row's V logits, reading the student's and the teacher's bf16 logits and writing the loss's bf16 gradient with
// respect to the student's logits: about 10 bytes an element, where the same loss written as tensor ops (float32
// copies, two log-softmaxes, exp, difference, product, sum, and the gradient's exp, difference and scale) moves
// about 80. With p = softmax(z / T):
//   KL row  = Σ_v p_T(v) (log p_T(v) − log p_S(v))            gradient  klScale · (p_S − p_T)   (klScale = w_KL · T · s)
//   CE row  = −log softmax(z_S)(target)                        gradient  ceScale · (softmax(z_S) − onehot(target))
// Pass 1 finds each softmax's maximum and sum of exponentials (online, per thread, then across the block); pass 2
// forms the terms. Row sums go to rowKl and rowCe (float32, one per row). grad may be null (values only).

#include "bf16.cuh"
#define LT 256
#define NEG_INF __uint_as_float(0xff800000u)

// (m, s) ⊕ (m2, s2): the running maximum and the sum of exp(x − m)
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2)
{
    if (m2 == NEG_INF) return;
    if (m == NEG_INF) { m = m2; s = s2; return; }
    float mx = fmaxf(m, m2);
    s = s * expf(m - mx) + s2 * expf(m2 - mx);
    m = mx;
}
__device__ __forceinline__ void push(float& m, float& s, float x)
{
    if (x > m) { s = s * expf(m - x) + 1.f; m = x; }
    else s += expf(x - m);
}
// block-wide merge of (m, s) pairs; every thread gets the result
__device__ void block_merge(float& m, float& s, float* sm, float* ss)
{
    for (int o = 16; o > 0; o >>= 1)
    {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        merge(m, s, m2, s2);
    }
    const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    __syncthreads();
    if (l == 0) { sm[w] = m; ss[w] = s; }
    __syncthreads();
    m = NEG_INF; s = 0.f;
    for (int i = 0; i < LT / 32; ++i) merge(m, s, sm[i], ss[i]);
}
__device__ float block_sum(float x, float* sx)
{
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    __syncthreads();
    if (l == 0) sx[w] = x;
    __syncthreads();
    float t = 0.f;
    for (int i = 0; i < LT / 32; ++i) t += sx[i];
    return t;
}

extern "C" __global__ void __launch_bounds__(LT) logit_loss_rows(
    const bf16r* __restrict__ zs, const bf16r* __restrict__ zt, const long long* __restrict__ targets, bf16r* __restrict__ grad,
    float* __restrict__ rowKl, float* __restrict__ rowCe, int V, float invT, float klScale, float ceScale, int useKl, int useCe)
{
    __shared__ float sm[LT / 32], ss[LT / 32];
    const size_t row = blockIdx.x;
    const bf16r* s = zs + row * V;
    const bf16r* t = zt ? zt + row * V : nullptr;
    // pass 1: softmax statistics of z_S / T, z_T / T and (for CE at T ≠ 1) z_S
    float msT = NEG_INF, ssT = 0.f, mtT = NEG_INF, stT = 0.f, m1 = NEG_INF, s1 = 0.f;
    const bool ceOwn = useCe && (!useKl || invT != 1.f);
    for (int v = threadIdx.x; v < V; v += LT)
    {
        float x = bf(s[v]);
        if (useKl) { push(msT, ssT, x * invT); push(mtT, stT, bf(t[v]) * invT); }
        if (ceOwn) push(m1, s1, x);
    }
    if (useKl) { block_merge(msT, ssT, sm, ss); block_merge(mtT, stT, sm, ss); }
    if (ceOwn) block_merge(m1, s1, sm, ss);
    if (useCe && !ceOwn) { m1 = msT; s1 = ssT; }
    const float lsS = logf(ssT), lsT = logf(stT), ls1 = logf(s1);
    const long long target = useCe ? targets[row] : -1;
    // pass 2: the row's terms and the gradient
    float kl = 0.f;
    for (int v = threadIdx.x; v < V; v += LT)
    {
        float x = bf(s[v]), g = 0.f;
        if (useKl)
        {
            float ls = x * invT - msT - lsS, lt = bf(t[v]) * invT - mtT - lsT, pt = expf(lt);
            kl += pt * (lt - ls);
            g += (expf(ls) - pt) * klScale;
        }
        if (useCe) g += (expf(x - m1 - ls1) - (v == target ? 1.f : 0.f)) * ceScale;
        if (grad) grad[row * V + v] = to_bf(g);
    }
    if (useKl)
    {
        kl = block_sum(kl, sm);
        if (threadIdx.x == 0) rowKl[row] = kl;
    }
    if (useCe && threadIdx.x == 0) rowCe[row] = target >= 0 && target < V ? -(bf(s[target]) - m1 - ls1) : __uint_as_float(0x7fc00000u);
}
