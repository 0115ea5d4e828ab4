// bf16 helpers the kernels share, for header-free NVRTC: bf16 held as its raw 16 bits. A kernel file takes them with
// #include "bf16.cuh", which KernelSource expands from the embedded copy before NVRTC sees the source.

typedef unsigned short bf16r;

__device__ __forceinline__ float bf(bf16r x) { return __uint_as_float((unsigned)x << 16); }

// to nearest, ties to even (as PyTorch's conversions round)
__device__ __forceinline__ bf16r to_bf(float x)
{
#if __CUDA_ARCH__ >= 800
    bf16r r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
#else
    // no bf16 conversion instruction before sm_80 (float32 runs there still take the kernels): the same rounding by hand
    unsigned u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16r)((u >> 16) | 0x40u);   // NaN stays a (quiet) NaN
    return (bf16r)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
#endif
}

// x rounded to bf16 and widened back
__device__ __forceinline__ float rounded(float x) { return bf(to_bf(x)); }

// eight bf16 in 16 bytes, element 2i in the low half of word i
__device__ __forceinline__ void unpack8(uint4 u, float (&f)[8])
{
    const unsigned v[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; i++)
    {
        f[2 * i] = __uint_as_float(v[i] << 16);
        f[2 * i + 1] = __uint_as_float(v[i] & 0xffff0000u);
    }
}
__device__ __forceinline__ uint4 pack8(const float (&f)[8])
{
    unsigned v[4];
#pragma unroll
    for (int i = 0; i < 4; i++) v[i] = (unsigned)to_bf(f[2 * i]) | ((unsigned)to_bf(f[2 * i + 1]) << 16);
    uint4 u;   // (make_uint4 lives in a header NVRTC does not have)
    u.x = v[0]; u.y = v[1]; u.z = v[2]; u.w = v[3];
    return u;
}

// the sum over a full warp, in every lane
__device__ __forceinline__ float warp_sum(float s)
{
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    return s;
}
