using static TorchSharp.torch;

namespace CombaDistill.Ops;

/// <summary>
/// PLACEHOLDER, to be replaced by the lead's fused CUDA kernels (issue 7): for now it only delegates to
/// <see cref="ChunkwiseComba.Forward"/> so that `bench kernel` and its tests compile and run. The real file keeps
/// exactly this signature and ChunkwiseComba's semantics, and falls back to ChunkwiseComba where
/// <see cref="Runtime.Cuda.CudaKernels.UnavailableReason"/> says the kernels cannot run.
/// </summary>
public static class FusedComba
{
    public static (Tensor Output, Tensor FinalState) Forward(
        Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor lambda, Tensor d, double scale,
        Tensor? initialState = null, int chunkSize = 64) =>
        ChunkwiseComba.Forward(q, k, v, g, beta, lambda, d, scale, initialState, chunkSize);
}
