namespace CombaDistill.Runtime.Cuda;

/// <summary>
/// A CUDA event on the NULL stream, for timing device work: the time between two recorded events is GPU time
/// of everything queued between them (TorchSharp ops and our kernels alike), host launch gaps included.
/// </summary>
public sealed class CudaEvent : IDisposable
{
    readonly CudaDevice device;
    IntPtr handle;

    public CudaEvent(CudaDevice device)
    {
        this.device = device;
        using var context = device.Enter();
        handle = CudaDriver.CreateEvent();
    }

    public void Record()
    {
        using var context = device.Enter();
        CudaDriver.RecordEvent(Handle);
    }

    /// <summary>Blocks until the device has passed this event.</summary>
    public void Synchronize()
    {
        using var context = device.Enter();
        CudaDriver.SynchronizeEvent(Handle);
    }

    /// <summary>Milliseconds from <paramref name="start"/> to this event (both recorded; this one waited for).</summary>
    public float MillisecondsSince(CudaEvent start)
    {
        using var context = device.Enter();
        return CudaDriver.ElapsedMilliseconds(start.Handle, Handle);
    }

    /// <summary>Device milliseconds of the work <paramref name="queue"/> enqueues on the NULL stream.</summary>
    public static float Time(CudaDevice device, Action queue)
    {
        using var start = new CudaEvent(device);
        using var end = new CudaEvent(device);
        start.Record();
        queue();
        end.Record();
        end.Synchronize();
        return end.MillisecondsSince(start);
    }

    IntPtr Handle => handle != IntPtr.Zero ? handle : throw new ObjectDisposedException(nameof(CudaEvent));

    public void Dispose()
    {
        if (handle == IntPtr.Zero) return;
        using var context = device.Enter();
        CudaDriver.DestroyEvent(handle);
        handle = IntPtr.Zero;
    }
}
