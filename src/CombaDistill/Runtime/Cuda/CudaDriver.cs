using System.Runtime.InteropServices;

namespace CombaDistill.Runtime.Cuda;

/// <summary>
/// The few CUDA driver API calls (libcuda.so.1) the kernels need, each checked: a failure throws a
/// <see cref="CudaException"/> naming the call and the driver's error name and text. The <c>_v2</c> entry points are
/// used where the driver has them (what cuda.h maps the plain names to). Handles are IntPtr (CUcontext, CUmodule,
/// CUfunction, CUevent); CUdevice is an int.
/// </summary>
public static unsafe class CudaDriver
{
    // CUdevice_attribute
    public const int AttributeMaxThreadsPerBlock = 1;
    public const int AttributeMultiprocessorCount = 16;
    public const int AttributeComputeCapabilityMajor = 75;
    public const int AttributeComputeCapabilityMinor = 76;
    public const int AttributeMaxSharedMemoryPerBlockOptin = 97;

    // CUfunction_attribute
    public const int FunctionMaxThreadsPerBlock = 0;
    public const int FunctionSharedSizeBytes = 1;
    public const int FunctionLocalSizeBytes = 3;
    public const int FunctionNumRegs = 4;
    public const int FunctionMaxDynamicSharedSizeBytes = 8;

    const int Success = 0;
    const int ErrorInvalidValue = 1;

    static readonly Lock Gate = new();
    static bool initialized;

    static CudaDriver() => CudaLibraries.EnsureResolver();

    /// <summary>Loads libcuda and calls cuInit once (PyTorch has usually done so already; it is idempotent).</summary>
    public static void Initialize()
    {
        lock (Gate)
        {
            if (initialized) return;
            CudaLibraries.LoadDriver();
            Check(cuInit(0), "cuInit");
            initialized = true;
        }
    }

    public static IntPtr CurrentContext()
    {
        Check(cuCtxGetCurrent(out var context), "cuCtxGetCurrent");
        return context;
    }

    /// <summary>The device of the current context.</summary>
    public static int CurrentContextDevice()
    {
        Check(cuCtxGetDevice(out var device), "cuCtxGetDevice");
        return device;
    }

    public static int Device(int ordinal)
    {
        Check(cuDeviceGet(out var device, ordinal), $"cuDeviceGet({ordinal})");
        return device;
    }

    public static int DeviceAttribute(int device, int attribute)
    {
        Check(cuDeviceGetAttribute(out var value, attribute, device), $"cuDeviceGetAttribute({attribute})");
        return value;
    }

    /// <summary>The device's primary context (the one the CUDA runtime, and so PyTorch, uses), retained for the process.</summary>
    public static IntPtr RetainPrimaryContext(int device)
    {
        Check(cuDevicePrimaryCtxRetain(out var context, device), "cuDevicePrimaryCtxRetain");
        return context;
    }

    public static void PushContext(IntPtr context) => Check(cuCtxPushCurrent_v2(context), "cuCtxPushCurrent");

    public static void PopContext() => Check(cuCtxPopCurrent_v2(out _), "cuCtxPopCurrent");

    public static void SynchronizeContext() => Check(cuCtxSynchronize(), "cuCtxSynchronize");

    /// <summary>Free and total bytes of the current context's device (every process's allocations count).</summary>
    public static (long Free, long Total) MemoryInfo()
    {
        Check(cuMemGetInfo_v2(out var free, out var total), "cuMemGetInfo");
        return ((long)free, (long)total);
    }

    public static IntPtr LoadModule(ReadOnlySpan<byte> image)
    {
        fixed (byte* p = image)
        {
            Check(cuModuleLoadData(out var module, p), "cuModuleLoadData");
            return module;
        }
    }

    /// <summary>cuModuleLoadData's result code without throwing (a damaged cached cubin is recompiled, not fatal).</summary>
    internal static int TryLoadModule(ReadOnlySpan<byte> image, out IntPtr module)
    {
        fixed (byte* p = image) return cuModuleLoadData(out module, p);
    }

    public static void UnloadModule(IntPtr module) => Check(cuModuleUnload(module), "cuModuleUnload");

    public static IntPtr ModuleFunction(IntPtr module, string loweredName)
    {
        var name = Utf8(loweredName);
        fixed (byte* p = name)
        {
            Check(cuModuleGetFunction(out var function, module, p), $"cuModuleGetFunction({loweredName})");
            return function;
        }
    }

    public static int FunctionAttribute(IntPtr function, int attribute)
    {
        Check(cuFuncGetAttribute(out var value, attribute, function), $"cuFuncGetAttribute({attribute})");
        return value;
    }

    public static void SetFunctionAttribute(IntPtr function, int attribute, int value) =>
        Check(cuFuncSetAttribute(function, attribute, value), $"cuFuncSetAttribute({attribute}, {value})");

    /// <summary>
    /// The byte size of each kernel parameter, from cuFuncGetParamInfo (CUDA 12.4+ drivers); null where the driver
    /// lacks it. Lets <see cref="CudaKernel.Launch"/> refuse an argument of the wrong width instead of passing garbage.
    /// </summary>
    public static IReadOnlyList<int>? ParameterSizes(IntPtr function)
    {
        var sizes = new List<int>();
        try
        {
            for (nuint i = 0; ; i++)
            {
                var result = cuFuncGetParamInfo(function, i, out _, out var size);
                if (result == ErrorInvalidValue) return sizes;   // past the last parameter
                if (result != Success) return null;             // anything else: no check rather than a false refusal
                sizes.Add((int)size);
            }
        }
        catch (EntryPointNotFoundException) { return null; }
    }

    /// <summary>
    /// Launches on the NULL stream, which with the plain (not <c>_ptsz</c>) entry point is the legacy default stream:
    /// the stream TorchSharp's ops run on, so the kernel is ordered after the ops that made its inputs and before
    /// the ops that read its outputs, with no extra synchronisation.
    /// </summary>
    public static void LaunchKernel(IntPtr function, (int X, int Y, int Z) grid, (int X, int Y, int Z) block, int dynamicSharedBytes, void** parameters) =>
        Check(cuLaunchKernel(function, (uint)grid.X, (uint)grid.Y, (uint)grid.Z, (uint)block.X, (uint)block.Y, (uint)block.Z,
            (uint)dynamicSharedBytes, IntPtr.Zero, parameters, null), "cuLaunchKernel");

    public static IntPtr CreateEvent()
    {
        Check(cuEventCreate(out var e, 0), "cuEventCreate");
        return e;
    }

    /// <summary>Records on the NULL (legacy default) stream, the one TorchSharp's ops and our launches use.</summary>
    public static void RecordEvent(IntPtr e) => Check(cuEventRecord(e, IntPtr.Zero), "cuEventRecord");

    public static void SynchronizeEvent(IntPtr e) => Check(cuEventSynchronize(e), "cuEventSynchronize");

    public static float ElapsedMilliseconds(IntPtr start, IntPtr end)
    {
        float ms;
        // cuda.h maps cuEventElapsedTime to _v2 from CUDA 12.8 on; older drivers export only the plain name.
        try { Check(cuEventElapsedTime_v2(out ms, start, end), "cuEventElapsedTime"); }
        catch (EntryPointNotFoundException) { Check(cuEventElapsedTime(out ms, start, end), "cuEventElapsedTime"); }
        return ms;
    }

    public static void DestroyEvent(IntPtr e) => Check(cuEventDestroy_v2(e), "cuEventDestroy");

    /// <summary>Throws unless <paramref name="result"/> is CUDA_SUCCESS.</summary>
    public static void Check(int result, string call)
    {
        if (result != Success) throw new CudaException(call, result, Describe(result));
    }

    /// <summary>"CUDA_ERROR_NAME (the driver's text)" for a CUresult.</summary>
    public static string Describe(int result)
    {
        var name = cuGetErrorName(result, out var n) == Success && n != IntPtr.Zero ? Marshal.PtrToStringUTF8(n) : null;
        var text = cuGetErrorString(result, out var s) == Success && s != IntPtr.Zero ? Marshal.PtrToStringUTF8(s) : null;
        return $"{name ?? $"CUresult {result}"} ({text ?? "no description"})";
    }

    internal static byte[] Utf8(string s) => System.Text.Encoding.UTF8.GetBytes(s + '\0');

    const string Lib = CudaLibraries.Driver;
    [DllImport(Lib)] static extern int cuInit(uint flags);
    [DllImport(Lib)] static extern int cuCtxGetCurrent(out IntPtr context);
    [DllImport(Lib)] static extern int cuCtxGetDevice(out int device);
    [DllImport(Lib)] static extern int cuCtxPushCurrent_v2(IntPtr context);
    [DllImport(Lib)] static extern int cuCtxPopCurrent_v2(out IntPtr context);
    [DllImport(Lib)] static extern int cuCtxSynchronize();
    [DllImport(Lib)] static extern int cuMemGetInfo_v2(out nuint free, out nuint total);
    [DllImport(Lib)] static extern int cuDeviceGet(out int device, int ordinal);
    [DllImport(Lib)] static extern int cuDeviceGetAttribute(out int value, int attribute, int device);
    [DllImport(Lib)] static extern int cuDevicePrimaryCtxRetain(out IntPtr context, int device);
    [DllImport(Lib)] static extern int cuModuleLoadData(out IntPtr module, byte* image);
    [DllImport(Lib)] static extern int cuModuleUnload(IntPtr module);
    [DllImport(Lib)] static extern int cuModuleGetFunction(out IntPtr function, IntPtr module, byte* name);
    [DllImport(Lib)] static extern int cuFuncGetAttribute(out int value, int attribute, IntPtr function);
    [DllImport(Lib)] static extern int cuFuncSetAttribute(IntPtr function, int attribute, int value);
    [DllImport(Lib)] static extern int cuFuncGetParamInfo(IntPtr function, nuint index, out nuint offset, out nuint size);
    [DllImport(Lib)] static extern int cuLaunchKernel(IntPtr function, uint gridX, uint gridY, uint gridZ, uint blockX, uint blockY, uint blockZ,
        uint sharedMemBytes, IntPtr stream, void** kernelParams, void** extra);
    [DllImport(Lib)] static extern int cuEventCreate(out IntPtr e, uint flags);
    [DllImport(Lib)] static extern int cuEventRecord(IntPtr e, IntPtr stream);
    [DllImport(Lib)] static extern int cuEventSynchronize(IntPtr e);
    [DllImport(Lib)] static extern int cuEventElapsedTime(out float ms, IntPtr start, IntPtr end);
    [DllImport(Lib)] static extern int cuEventElapsedTime_v2(out float ms, IntPtr start, IntPtr end);
    [DllImport(Lib)] static extern int cuEventDestroy_v2(IntPtr e);
    [DllImport(Lib)] static extern int cuGetErrorName(int result, out IntPtr name);
    [DllImport(Lib)] static extern int cuGetErrorString(int result, out IntPtr text);
}
