// The short convolution of a Comba layer at a sequence start: depthwise and causal over time, kernel K = 4, on
// (B, T, C) bf16 activations (C fastest, so a warp reads 32 consecutive channels of one row), with float32 weights
// (C, K) and float32 arithmetic, zeros before t = 0:
//   y[b, t, c] = Σ_j w[c, j] · x[b, t − (K − 1) + j, c]
// Backward: dx[b, t, c] = Σ_j w[c, j] · dy[b, t + (K − 1) − j, c] (terms past T are zero), and
// dw[c, j] = Σ_{b, t} dy[b, t, c] · x[b, t − (K − 1) + j, c], each block summing a run of rows for 256 channels in
// registers and adding into dw (float32, zeroed by the caller) atomically. Each pass reads its inputs once and writes
// once, where conv1d over the transposed (B, C, T) layout needs the layout copies around it.

typedef unsigned short bf16r;
#define K 4

__device__ __forceinline__ float bf(bf16r x) { return __uint_as_float((unsigned)x << 16); }
__device__ __forceinline__ bf16r to_bf(float x)   // to nearest even
{
    bf16r r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}

extern "C" __global__ void short_conv_fwd(const bf16r* __restrict__ x, const float* __restrict__ w, bf16r* __restrict__ y,
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
            const int back = K - 1 - j;   // rows before t
            if (t >= back) s += w[c * K + j] * bf(x[i - (long long)back * C]);
        }
        y[i] = to_bf(s);
    }
}

extern "C" __global__ void short_conv_bwd_x(const bf16r* __restrict__ dy, const float* __restrict__ w, bf16r* __restrict__ dx,
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
            const int ahead = K - 1 - j;  // the output row that read x[t] through tap j
            if (t + ahead < T) s += w[c * K + j] * bf(dy[i + (long long)ahead * C]);
        }
        dx[i] = to_bf(s);
    }
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
