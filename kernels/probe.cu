// Availability probe: CudaKernels.UnavailableReason compiles, loads and launches this once per process and
// device, so that a fused op falls back to TorchSharp before its first real launch rather than failing in it.
// Header-free like every kernel here: NVRTC from a pip wheel or a toolkit finds no CUDA headers on its own.
extern "C" __global__ void combadistill_probe(float* out, float base, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = base + (float)i;
}
