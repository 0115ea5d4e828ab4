using CombaDistill.Conversion;
using CombaDistill.Modeling.Comba;
using CombaDistill.Tests.Modeling;
using CombaDistill.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Modeling;

/// <summary>The GPU lane: a converted student on CUDA computes what it computes on the CPU, read at once or token by token.</summary>
public class StudentGpuTests
{
    [Fact]
    public void Student_on_CUDA_matches_the_CPU_and_its_own_decoding()
    {
        Gpu.Require();
        using var temp = new TempDir();
        var teacherFolder = TeacherFolders.WriteRandom(temp["teacher"], TinyModels.Llama3Gqa, seed: 41);
        CombaConverter.Convert(teacherFolder, temp["student"], new ConversionOptions
        {
            KeepAttention = "1",
            Comba = ConversionOptions.DefaultComba with { Rotary = "teacher", ChunkSize = 16 },
        }, cancellationToken: TestContext.Current.CancellationToken);

        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        using var cpu = CombaForCausalLM.FromPretrained(temp["student"]);
        using var cuda = CombaForCausalLM.FromPretrained(temp["student"], device: CUDA);
        Assert.Equal(DeviceType.CUDA, cuda.Device.type);
        var ids = TinyModels.RandomIds(TinyModels.Llama3Gqa, 40, seed: 3);
        var onCpu = cpu.forward(tensor(ids, [1, 40]));
        var onCuda = cuda.forward(tensor(ids, [1, 40], device: CUDA));
        Assert.True((onCuda.cpu() - onCpu).abs().max().item<float>() <= 1e-4);

        using var state = cuda.NewDecodingState(1);
        var stepped = cat(ids.Select(id => cuda.forward(tensor(new[] { id }, [1, 1], device: CUDA), state)).ToArray(), 1);
        Assert.True((stepped.cpu() - onCpu).abs().max().item<float>() <= 1e-4);
    }
}
