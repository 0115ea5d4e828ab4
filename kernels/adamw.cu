// One AdamW step over one float32 parameter, in one pass: read p, g, m, v once, write p, m, v once (28 bytes an
// element, where the same step written as tensor ops reads and writes about 90). The arithmetic is the decoupled
// weight decay form, in this order (float32, as the tensor-op form computes it):
//   g ← g · s;  p ← p (1 − lr·wd);  m ← β₁ m + (1 − β₁) g;  v ← β₂ v + (1 − β₂) g²;  p ← p − (lr / bc₁) · m / (√v / √bc₂ + ε)
// with bc₁ = 1 − β₁ᵗ and bc₂ = 1 − β₂ᵗ computed on the host, and s the gradient-clipping factor (1 when the norm is
// within bounds: the clip's own pass over the gradients, g ← g · s, is folded in here). Not bit for bit the tensor
// ops' result: the compiler may fuse a multiply and an add that those round separately (a few units in the last
// place per step). When w is not null it also receives p rounded to bf16 (to nearest even, as PyTorch's copy_ does),
// the student's working copy under mixed precision, which saves a second pass that reads p again. Grid-stride; the
// _v4 form reads and writes float4 (every pointer 16-byte aligned, w 8-byte aligned, and n a multiple of 4, which
// the caller checks).

#include "bf16.cuh"

__device__ __forceinline__ void adamw_one(float& p, float& m, float& v, float g, float scale, float decay, float b1, float b2, float c1,
                                          float c2, float stepSize, float bc2Sqrt, float eps)
{
    g = g * scale;
    p = p * decay;
    m = m * b1 + c1 * g;
    v = v * b2 + c2 * g * g;
    p = p - stepSize * (m / (sqrtf(v) / bc2Sqrt + eps));
}

extern "C" __global__ void adamw_step(float* __restrict__ p, float* __restrict__ m, float* __restrict__ v, const float* __restrict__ g,
                                      bf16r* __restrict__ w, long long n, float scale, float decay, float b1, float b2, float c1, float c2,
                                      float stepSize, float bc2Sqrt, float eps)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    {
        float pi = p[i], mi = m[i], vi = v[i];
        adamw_one(pi, mi, vi, g[i], scale, decay, b1, b2, c1, c2, stepSize, bc2Sqrt, eps);
        p[i] = pi, m[i] = mi, v[i] = vi;
        if (w) w[i] = to_bf(pi);
    }
}

extern "C" __global__ void adamw_step_v4(float4* __restrict__ p, float4* __restrict__ m, float4* __restrict__ v, const float4* __restrict__ g,
                                         ushort4* __restrict__ w, long long n4, float scale, float decay, float b1, float b2, float c1, float c2,
                                         float stepSize, float bc2Sqrt, float eps)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += (long long)gridDim.x * blockDim.x)
    {
        float4 pi = p[i], mi = m[i], vi = v[i], gi = g[i];
        adamw_one(pi.x, mi.x, vi.x, gi.x, scale, decay, b1, b2, c1, c2, stepSize, bc2Sqrt, eps);
        adamw_one(pi.y, mi.y, vi.y, gi.y, scale, decay, b1, b2, c1, c2, stepSize, bc2Sqrt, eps);
        adamw_one(pi.z, mi.z, vi.z, gi.z, scale, decay, b1, b2, c1, c2, stepSize, bc2Sqrt, eps);
        adamw_one(pi.w, mi.w, vi.w, gi.w, scale, decay, b1, b2, c1, c2, stepSize, bc2Sqrt, eps);
        p[i] = pi, m[i] = mi, v[i] = vi;
        if (w) w[i] = make_ushort4(to_bf(pi.x), to_bf(pi.y), to_bf(pi.z), to_bf(pi.w));
    }
}
