// RMSNorm over the last dimension D of bf16 rows, as Hugging Face's Llama computes it: in float32,
//   r = 1 / sqrt(mean(x²) + ε),   n = bf16(x · r),   y = bf16(w · n)
// (the normalised row is rounded to the model's dtype before the weight multiplies it). One warp a row, eight
// elements a lane per 16-byte load (D a multiple of 8); the row is read twice (the second time from cache).
// Backward, with g = dy · w:   dx = r · (g − x̂ · Σ(g · x̂) / D),  x̂ = x · r;   dw = Σ_rows dy · n,
// each block summing its rows' dw in shared memory and adding it into dw (float32, zeroed by the caller) once.

#include "bf16.cuh"
#define NT 256
#define NW (NT / 32)

// rstd: the row's r (float32, (rows)), or null when no backward will need it
extern "C" __global__ void __launch_bounds__(NT) rms_norm_fwd(const bf16r* __restrict__ x, const bf16r* __restrict__ w,
                                                              bf16r* __restrict__ y, float* __restrict__ rstd, int D, int rows, float eps)
{
    const int row = blockIdx.x * NW + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    const uint4* xr = reinterpret_cast<const uint4*>(x + (size_t)row * D);
    const uint4* wr = reinterpret_cast<const uint4*>(w);
    uint4* yr = reinterpret_cast<uint4*>(y + (size_t)row * D);
    const int V = D / 8;
    float f[8], g[8];
    float ss = 0.f;
    for (int v = lane; v < V; v += 32)
    {
        unpack8(xr[v], f);
#pragma unroll
        for (int e = 0; e < 8; e++) ss += f[e] * f[e];
    }
    const float r = 1.f / sqrtf(warp_sum(ss) / (float)D + eps);
    if (rstd != nullptr && lane == 0) rstd[row] = r;
    for (int v = lane; v < V; v += 32)
    {
        unpack8(xr[v], f);
        unpack8(wr[v], g);
#pragma unroll
        for (int e = 0; e < 8; e++) f[e] = g[e] * rounded(f[e] * r);
        yr[v] = pack8(f);
    }
}

// grid: blocks of NW warps, each block a run of rowsPerBlock rows (warp k of the block takes rows r0 + k, r0 + k + NW, …);
// dynamic shared memory D floats when dw is wanted, else none
extern "C" __global__ void __launch_bounds__(NT) rms_norm_bwd(const bf16r* __restrict__ x, const bf16r* __restrict__ w,
                                                              const bf16r* __restrict__ dy, const float* __restrict__ rstd,
                                                              bf16r* __restrict__ dx, float* __restrict__ dw, int D, int rows,
                                                              int rowsPerBlock)
{
    extern __shared__ float dwPart[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, V = D / 8;
    if (dw != nullptr)
    {
        for (int i = threadIdx.x; i < D; i += NT) dwPart[i] = 0.f;
        __syncthreads();
    }
    const uint4* wr = reinterpret_cast<const uint4*>(w);
    const int r0 = blockIdx.x * rowsPerBlock, r1 = min(r0 + rowsPerBlock, rows);
    for (int row = r0 + warp; row < r1; row += NW)
    {
        const uint4* xr = reinterpret_cast<const uint4*>(x + (size_t)row * D);
        const uint4* dyr = reinterpret_cast<const uint4*>(dy + (size_t)row * D);
        uint4* dxr = reinterpret_cast<uint4*>(dx + (size_t)row * D);
        const float r = rstd[row];
        float f[8], d[8], g[8];
        float dot = 0.f;
        for (int v = lane; v < V; v += 32)
        {
            unpack8(xr[v], f);
            unpack8(dyr[v], d);
            unpack8(wr[v], g);
#pragma unroll
            for (int e = 0; e < 8; e++)
            {
                const float xh = f[e] * r;
                dot += rounded(d[e] * g[e]) * xh;   // the bf16 product dy · w that the tensor ops' backward forms
                if (dw != nullptr) atomicAdd(&dwPart[e * V + v], d[e] * rounded(xh));   // element 8v + e, lanes on distinct banks
            }
        }
        const float c = warp_sum(dot) / (float)D;
        for (int v = lane; v < V; v += 32)
        {
            unpack8(xr[v], f);
            unpack8(dyr[v], d);
            unpack8(wr[v], g);
#pragma unroll
            for (int e = 0; e < 8; e++) f[e] = r * (rounded(d[e] * g[e]) - f[e] * r * c);
            dxr[v] = pack8(f);
        }
    }
    if (dw != nullptr)
    {
        __syncthreads();
        for (int i = threadIdx.x; i < D; i += NT) atomicAdd(&dw[i], dwPart[(i % 8) * V + i / 8]);
    }
}
