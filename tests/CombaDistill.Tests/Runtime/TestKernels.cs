using CombaDistill.Runtime.Cuda;

namespace CombaDistill.Tests.Runtime;

/// <summary>Small header-free kernels the NVRTC and GPU lanes compile and run (bf16 as raw 16-bit values, as the Comba kernels hold it).</summary>
public static class TestKernels
{
    public static readonly KernelSource Source = new("test_kernels.cu", """
        // bf16 <-> float without cuda_bf16.h: a bf16 is the high half of a float's bits.
        __device__ __forceinline__ float bf16_to_float(unsigned short b)
        {
            float f;
            asm("mov.b32 %0, %1;" : "=f"(f) : "r"(((unsigned int)b) << 16));
            return f;
        }

        __device__ __forceinline__ unsigned short float_to_bf16(float f)
        {
            unsigned int u;
            asm("mov.b32 %0, %1;" : "=r"(u) : "f"(f));
            if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);   // NaN stays (quiet) NaN
            u += 0x7fffu + ((u >> 16) & 1u);                                                     // round to nearest, ties to even
            return (unsigned short)(u >> 16);
        }

        extern "C" __global__ void axpy_f32(float* y, const float* x, float a, int n)
        {
            int i = blockIdx.x * blockDim.x + threadIdx.x;
            if (i < n) y[i] = a * x[i] + y[i];
        }

        extern "C" __global__ void axpy_bf16(unsigned short* out, const unsigned short* x, const float* y, float a, int n)
        {
            int i = blockIdx.x * blockDim.x + threadIdx.x;
            if (i < n) out[i] = float_to_bf16(a * bf16_to_float(x[i]) + y[i]);
        }

        template <int N>
        __global__ void fill(float* out)
        {
            out[threadIdx.x] = (float)(N * 1000 + (int)threadIdx.x);
        }

        // Dynamic shared memory beyond the default 48 KB: stage n floats, write them back reversed.
        extern "C" __global__ void shared_reverse(float* out, const float* in, int n)
        {
            extern __shared__ float staged[];
            for (int i = threadIdx.x; i < n; i += blockDim.x) staged[i] = in[i];
            __syncthreads();
            for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = staged[n - 1 - i];
        }

        // Busy work whose duration grows with the iteration count, for the event timing test.
        extern "C" __global__ void spin(float* out, int iterations)
        {
            float x = (float)threadIdx.x;
            for (int i = 0; i < iterations; i++) x = x * 0.999f + 1.0f;
            out[blockIdx.x * blockDim.x + threadIdx.x] = x;
        }
        """);

    public static readonly string[] Names = ["axpy_f32", "axpy_bf16", "fill<3>", "shared_reverse", "spin"];

    /// <summary>Without contraction to FMA, a·x + y rounds twice, exactly as TorchSharp's separate mul and add do.</summary>
    public static readonly KernelCompileOptions Exact = new() { ExtraOptions = ["--fmad=false"] };

    public static readonly KernelSource Broken = new("broken.cu", """
        extern "C" __global__ void broken(float* out)
        {
            out[0] = 1.0f
        }
        """);

    /// <summary>True where libnvrtc can be loaded (the GPU host; also a development machine with a CUDA toolkit).</summary>
    public static bool NvrtcAvailable
    {
        get
        {
            try { Nvrtc.Version(); return true; }
            catch (CudaUnavailableException) { return false; }
        }
    }
}
