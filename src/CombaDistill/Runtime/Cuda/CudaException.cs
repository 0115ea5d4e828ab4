namespace CombaDistill.Runtime.Cuda;

/// <summary>A CUDA driver or NVRTC call failed; the message names the call and the library's own error name and text.</summary>
public class CudaException(string call, int code, string detail) : Exception($"{call} failed: {detail}")
{
    /// <summary>The failing entry point, e.g. <c>cuLaunchKernel</c>.</summary>
    public string Call { get; } = call;
    /// <summary>The CUresult or nvrtcResult value.</summary>
    public int Code { get; } = code;
}

/// <summary>NVRTC rejected a kernel source; <see cref="Log"/> is NVRTC's full log (file:line: error ...).</summary>
public sealed class CudaCompileException(string kernelFile, string log, IReadOnlyList<string> options)
    : Exception($"NVRTC could not compile {kernelFile} (options: {string.Join(' ', options)}):\n{log.TrimEnd()}")
{
    public string KernelFile { get; } = kernelFile;
    public string Log { get; } = log;
}

/// <summary>The fused kernels cannot run here at all (no CUDA device, no libcuda, no NVRTC); the message says which.</summary>
public sealed class CudaUnavailableException(string reason, Exception? inner = null) : Exception(reason, inner);
