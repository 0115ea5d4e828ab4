using System.Runtime.InteropServices;
using System.Text;

namespace CombaDistill.Runtime.Cuda;

/// <summary>One NVRTC compilation: the CUBIN, the lowered (mangled) name of each requested kernel, and NVRTC's log.</summary>
public sealed record NvrtcOutput(byte[] Cubin, IReadOnlyDictionary<string, string> LoweredNames, string Log);

/// <summary>
/// NVRTC, the CUDA runtime compiler (libnvrtc, located by <see cref="CudaLibraries"/>). The pip and toolkit
/// copies carry no CUDA headers NVRTC can find on its own, so kernel sources are header-free.
/// </summary>
public static unsafe class Nvrtc
{
    const int Success = 0;
    const int ErrorInvalidOption = 5;
    const int ErrorCompilation = 6;

    static Nvrtc() => CudaLibraries.EnsureResolver();

    /// <summary>NVRTC's (major, minor) version; part of every kernel cache key.</summary>
    public static (int Major, int Minor) Version()
    {
        CudaLibraries.LoadNvrtc();
        Check(nvrtcVersion(out var major, out var minor), "nvrtcVersion");
        return (major, minor);
    }

    /// <summary>
    /// Compiles <paramref name="source"/> to a CUBIN. Each name expression (an extern "C" kernel name, or a C++ one
    /// such as <c>comba_fwd&lt;128&gt;</c>) is registered before compiling and its lowered name read after.
    /// A rejected source throws <see cref="CudaCompileException"/> carrying the log; <paramref name="fileName"/> is
    /// the name NVRTC puts in front of every log line.
    /// </summary>
    public static NvrtcOutput Compile(string source, string fileName, IReadOnlyList<string> nameExpressions, IReadOnlyList<string> options)
    {
        CudaLibraries.LoadNvrtc();
        var src = CudaDriver.Utf8(source);
        var name = CudaDriver.Utf8(fileName);
        IntPtr program;
        fixed (byte* s = src, n = name)
            Check(nvrtcCreateProgram(out program, s, n, 0, null, null), "nvrtcCreateProgram");
        try
        {
            foreach (var expression in nameExpressions)
            {
                var e = CudaDriver.Utf8(expression);
                fixed (byte* p = e) Check(nvrtcAddNameExpression(program, p), $"nvrtcAddNameExpression({expression})");
            }

            var optionBytes = options.Select(CudaDriver.Utf8).ToArray();
            var handles = optionBytes.Select(b => GCHandle.Alloc(b, GCHandleType.Pinned)).ToArray();
            int result;
            try
            {
                var pointers = stackalloc IntPtr[Math.Max(1, handles.Length)];
                for (int i = 0; i < handles.Length; i++) pointers[i] = handles[i].AddrOfPinnedObject();
                result = nvrtcCompileProgram(program, handles.Length, pointers);
            }
            finally
            {
                foreach (var h in handles) h.Free();
            }
            var log = Log(program);
            // an option this NVRTC does not know (say, an architecture newer than it) is the source's problem too
            if (result is ErrorCompilation or ErrorInvalidOption)
                throw new CudaCompileException(fileName, log.Length > 0 ? log : ErrorText(result), options);
            Check(result, "nvrtcCompileProgram");

            var lowered = new Dictionary<string, string>();
            foreach (var expression in nameExpressions)
            {
                var e = CudaDriver.Utf8(expression);
                fixed (byte* p = e)
                {
                    Check(nvrtcGetLoweredName(program, p, out var l), $"nvrtcGetLoweredName({expression})");
                    lowered[expression] = Marshal.PtrToStringUTF8(l) ?? expression;
                }
            }

            Check(nvrtcGetCUBINSize(program, out var size), "nvrtcGetCUBINSize");
            var cubin = new byte[(int)size];
            fixed (byte* c = cubin) Check(nvrtcGetCUBIN(program, c), "nvrtcGetCUBIN");
            return new NvrtcOutput(cubin, lowered, log);
        }
        finally
        {
            nvrtcDestroyProgram(ref program);
        }
    }

    static string Log(IntPtr program)
    {
        Check(nvrtcGetProgramLogSize(program, out var size), "nvrtcGetProgramLogSize");
        if (size <= 1) return "";
        var log = new byte[(int)size];
        fixed (byte* l = log) Check(nvrtcGetProgramLog(program, l), "nvrtcGetProgramLog");
        return Encoding.UTF8.GetString(log, 0, log.Length - 1);   // without the terminating NUL
    }

    static void Check(int result, string call)
    {
        if (result == Success) return;
        throw new CudaException(call, result, ErrorText(result));
    }

    static string ErrorText(int result) =>
        nvrtcGetErrorString(result) is var p && p != IntPtr.Zero ? Marshal.PtrToStringUTF8(p) ?? $"nvrtcResult {result}" : $"nvrtcResult {result}";

    const string Lib = CudaLibraries.NvrtcName;
    [DllImport(Lib)] static extern int nvrtcVersion(out int major, out int minor);
    [DllImport(Lib)] static extern int nvrtcCreateProgram(out IntPtr program, byte* source, byte* name, int numHeaders, byte** headers, byte** includeNames);
    [DllImport(Lib)] static extern int nvrtcAddNameExpression(IntPtr program, byte* nameExpression);
    [DllImport(Lib)] static extern int nvrtcCompileProgram(IntPtr program, int numOptions, IntPtr* options);
    [DllImport(Lib)] static extern int nvrtcGetLoweredName(IntPtr program, byte* nameExpression, out IntPtr loweredName);
    [DllImport(Lib)] static extern int nvrtcGetProgramLogSize(IntPtr program, out nuint size);
    [DllImport(Lib)] static extern int nvrtcGetProgramLog(IntPtr program, byte* log);
    [DllImport(Lib)] static extern int nvrtcGetCUBINSize(IntPtr program, out nuint size);
    [DllImport(Lib)] static extern int nvrtcGetCUBIN(IntPtr program, byte* cubin);
    [DllImport(Lib)] static extern int nvrtcDestroyProgram(ref IntPtr program);
    [DllImport(Lib)] static extern IntPtr nvrtcGetErrorString(int result);
}
