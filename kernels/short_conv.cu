// The short convolution of a Comba layer at a sequence start: depthwise and causal over time, kernel K = 4, on
// (B, T, C) bf16 activations (C fastest, so a warp reads 32 consecutive channels of one row), with float32 weights
// (C, K) and float32 arithmetic, zeros before t = 0:
//   y[b, t, c] = Σ_j w[c, j] · x[b, t − (K − 1) + j, c]
// Backward: dx[b, t, c] = Σ_j w[c, j] · dy[b, t + (K − 1) − j, c] (terms past T are zero), and
// dw[c, j] = Σ_{b, t} dy[b, t, c] · x[b, t − (K − 1) + j, c], each block summing a run of rows for 256 channels in
// registers and adding into dw (float32, zeroed by the caller) atomically. Each pass reads its inputs once and writes
// once, where conv1d over the transposed (B, C, T) layout needs the layout copies around it.

#include "bf16.cuh"
#define K 4

// out[i] = Σ_j w[c, j] · in[i + o_j · C] over rows of the same sequence, with o_j = −(K − 1 − j) for the output
// (rows back) and o_j = K − 1 − j for the input's gradient (the output row that read x[t] through tap j, rows ahead).
template <bool Ahead>
__device__ __forceinline__ void conv_rows(const bf16r* __restrict__ in, const float* __restrict__ w, bf16r* __restrict__ out,
                                          int T, int C, long long total)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x)
    {
        const int c = (int)(i % C);
        const int t = (int)((i / C) % T);
        float s = 0.f;
#pragma unroll
        for (int j = 0; j < K; j++)
        {
            const int o = K - 1 - j;
            if (Ahead ? t + o < T : t >= o) s += w[c * K + j] * bf(in[Ahead ? i + (long long)o * C : i - (long long)o * C]);
        }
        out[i] = to_bf(s);
    }
}

extern "C" __global__ void short_conv_fwd(const bf16r* __restrict__ x, const float* __restrict__ w, bf16r* __restrict__ y,
                                          int T, int C, long long total)
{
    conv_rows<false>(x, w, y, T, C, total);
}

extern "C" __global__ void short_conv_bwd_x(const bf16r* __restrict__ dy, const float* __restrict__ w, bf16r* __restrict__ dx,
                                            int T, int C, long long total)
{
    conv_rows<true>(dy, w, dx, T, C, total);
}

// grid (⌈C / blockDim.x⌉, ⌈B·T / rowsPerBlock⌉): one channel a thread, one run of rows (b, t flattened) a block row
extern "C" __global__ void short_conv_bwd_w(const bf16r* __restrict__ dy, const bf16r* __restrict__ x, float* __restrict__ dw,
                                            int T, int C, long long rows, int rowsPerBlock)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const long long r0 = (long long)blockIdx.y * rowsPerBlock;
    const long long r1 = min(r0 + rowsPerBlock, rows);
    float acc[K] = {0.f, 0.f, 0.f, 0.f};
    for (long long r = r0; r < r1; r++)
    {
        const int t = (int)(r % T);
        const float g = bf(dy[r * C + c]);
#pragma unroll
        for (int j = 0; j < K; j++)
        {
            const int back = K - 1 - j;
            if (t >= back) acc[j] += g * bf(x[(r - back) * C + c]);
        }
    }
#pragma unroll
    for (int j = 0; j < K; j++) atomicAdd(&dw[c * K + j], acc[j]);
}

// ── Eight channels a thread (C a multiple of 8): 16-byte loads and stores of bf16 rows, 32-bit index arithmetic ──
// The same sums as above. The weight gradient's block is 32 channel groups × 8 row lanes; the lanes' partial sums
// meet in shared memory and each block adds its 32 × 32 sums into dw once.

__device__ __forceinline__ float tap(const float4& w, int j) { return j == 0 ? w.x : j == 1 ? w.y : j == 2 ? w.z : w.w; }

// G = C / 8 channel groups; total = B·T·G. out[r] = Σ_j w[j] · in[r + o_j] over rows of the same sequence, with
// o_j = −(K − 1 − j) for the output (rows back) and o_j = K − 1 − j for the input's gradient (rows ahead).
template <bool Ahead>
__device__ __forceinline__ void conv_rows8(const bf16r* __restrict__ in, const float* __restrict__ w, bf16r* __restrict__ out,
                                           int T, int G, int total)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x)
    {
        const int g = i % G, r = i / G, t = r % T;
        const float4* wg = reinterpret_cast<const float4*>(w) + (size_t)g * 8;   // channel c's four taps are one float4
        float4 wc[8];
#pragma unroll
        for (int e = 0; e < 8; e++) wc[e] = wg[e];
        float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f}, v[8];
#pragma unroll
        for (int j = 0; j < K; j++)
        {
            const int o = Ahead ? K - 1 - j : -(K - 1 - j);
            if (t + o < 0 || t + o >= T) continue;
            unpack8(*reinterpret_cast<const uint4*>(in + ((size_t)(r + o) * G + g) * 8), v);
#pragma unroll
            for (int e = 0; e < 8; e++) acc[e] += tap(wc[e], j) * v[e];
        }
        *reinterpret_cast<uint4*>(out + ((size_t)r * G + g) * 8) = pack8(acc);
    }
}

extern "C" __global__ void short_conv_fwd8(const bf16r* __restrict__ x, const float* __restrict__ w, bf16r* __restrict__ y,
                                           int T, int G, int total)
{
    conv_rows8<false>(x, w, y, T, G, total);
}

extern "C" __global__ void short_conv_bwd_x8(const bf16r* __restrict__ dy, const float* __restrict__ w, bf16r* __restrict__ dx,
                                             int T, int G, int total)
{
    conv_rows8<true>(dy, w, dx, T, G, total);
}

// block (32, 8), grid (⌈G / 32⌉, row chunks of rowsPerBlock); dynamic shared memory 8 · 32 · 33 floats
extern "C" __global__ void short_conv_bwd_w8(const bf16r* __restrict__ dy, const bf16r* __restrict__ x, float* __restrict__ dw,
                                             int T, int G, int rows, int rowsPerBlock)
{
    extern __shared__ float part[];
    const int tx = threadIdx.x, ty = threadIdx.y, g = blockIdx.x * 32 + tx;
    const int r0 = blockIdx.y * rowsPerBlock, r1 = min(r0 + rowsPerBlock, rows);
    float acc[32];
#pragma unroll
    for (int k = 0; k < 32; k++) acc[k] = 0.f;
    if (g < G)
        for (int r = r0 + ty; r < r1; r += 8)
        {
            const int t = r % T;
            float d[8], v[8];
            unpack8(*reinterpret_cast<const uint4*>(dy + ((size_t)r * G + g) * 8), d);
#pragma unroll
            for (int j = 0; j < K; j++)
            {
                const int back = K - 1 - j;
                if (t < back) continue;
                unpack8(*reinterpret_cast<const uint4*>(x + ((size_t)(r - back) * G + g) * 8), v);
#pragma unroll
                for (int e = 0; e < 8; e++) acc[e * K + j] += d[e] * v[e];
            }
        }
    // the eight row lanes' sums, each (channel group, e·4 + j) at tx·33 + k (a padded row: no bank conflicts)
#pragma unroll
    for (int k = 0; k < 32; k++) part[ty * 32 * 33 + tx * 33 + k] = acc[k];
    __syncthreads();
    // dw is (C, 4), so a group's 32 sums are consecutive: the block's are dw[blockIdx.x · 1024 + o], o = tx·32 + k
    for (int o = ty * 32 + tx; o < 1024; o += 256)
    {
        const int gx = o / 32, k = o % 32;
        if (blockIdx.x * 32 + gx >= G) continue;
        float s = 0.f;
#pragma unroll
        for (int l = 0; l < 8; l++) s += part[l * 32 * 33 + gx * 33 + k];
        atomicAdd(&dw[(size_t)blockIdx.x * 1024 + o], s);
    }
}
