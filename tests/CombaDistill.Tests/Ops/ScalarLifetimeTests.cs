using CombaDistill.Ops;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Ops;

/// <summary>
/// A TorchSharp Scalar made by implicit conversion (a double passed where an op takes a Scalar) is reachable only until
/// its handle is read. It has a finalizer and no dispose scope holds it, so a garbage collection that runs while the op
/// is inside libtorch can free it under the op, which then reads a freed Scalar ("toDouble … Expected false to be
/// true"). A CI run hit this in L2Normalize's clamp_min during a distillation. These tests run the op many times
/// while another thread collects and finalizes without pause, which makes that window easy to hit.
/// </summary>
public class ScalarLifetimeTests
{
    static int Hammer(Action op, int iterations)
    {
        var stop = 0;
        var collector = new Thread(() =>
        {
            while (Volatile.Read(ref stop) == 0)
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
            }
        });
        collector.Start();
        var failures = 0;
        try
        {
            for (var i = 0; i < iterations; i++)
            {
                try { op(); }
                catch (Exception e) when (e is System.Runtime.InteropServices.ExternalException or InvalidOperationException) { failures++; }
            }
        }
        finally
        {
            Volatile.Write(ref stop, 1);
            collector.Join();
        }
        return failures;
    }

    [Fact]
    public void L2Normalize_survives_collections_during_its_clamp()
    {
        using var x = randn(64, 4096, dtype: ScalarType.Float32);
        var failures = Hammer(() =>
        {
            using var scope = NewDisposeScope();
            var y = CombaMath.L2Normalize(x);
            Assert.Equal(x.shape, y.shape);
        }, 16000);
        Assert.Equal(0, failures);
    }
}
