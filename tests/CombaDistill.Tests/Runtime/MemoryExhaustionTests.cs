using System.Runtime.InteropServices;
using CombaDistill.Runtime;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Runtime;

public class MemoryExhaustionTests
{
    [Fact]
    public void A_real_allocation_failure_of_libtorch_reads_as_one_line_with_what_to_change()
    {
        // 2⁵⁰ floats, 4 PiB: past any machine's memory and past the 128 TiB a Linux process can address, so it fails
        // whatever the kernel's overcommit setting
        var e = Assert.ThrowsAny<Exception>(() => empty([1L << 50], ScalarType.Float32));
        TestContext.Current.TestOutputHelper?.WriteLine(e.Message.Split('\n')[0]);
        var line = MemoryExhaustion.Describe(e);
        Assert.NotNull(line);
        Assert.StartsWith("the machine ran out of memory (", line);
        Assert.Contains("micro_batch", line);
        Assert.DoesNotContain('\n', line);
    }

    [Fact]
    public void The_CUDA_allocators_message_keeps_what_was_asked_and_what_the_device_had()
    {
        // the first line of PyTorch 2.x's CUDA allocator failure, as libtorch raises it
        var message = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.23 GiB is free. " +
                      "Including non-PyTorch memory, this process has 77.95 GiB memory in use. Of the allocated memory 75.20 GiB is allocated by PyTorch, " +
                      "and 1.30 GiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting " +
                      "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.\nException raised from malloc at c10/cuda/CUDACachingAllocator.cpp";
        var line = MemoryExhaustion.Describe(new ExternalException(message));
        Assert.Equal("the GPU ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.23 GiB is free); " +
                     "lower the stage's micro_batch (and raise accumulation to keep the batch), turn on activation_checkpointing for distillation stages, " +
                     "or spread the run over more GPUs; docs/gpu.md gives the limits measured at the 1B shape", line);
        Assert.Null(MemoryExhaustion.Describe(new ExternalException("shape '[2, 3]' is invalid for input of size 5")));
        Assert.Null(MemoryExhaustion.Describe(new InvalidOperationException("CUDA out of memory")));
    }
}
