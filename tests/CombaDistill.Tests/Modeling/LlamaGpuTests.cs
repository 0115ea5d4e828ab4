using CombaDistill.Conversion;
using CombaDistill.IO;
using CombaDistill.Modeling;
using CombaDistill.Modeling.Llama;
using CombaDistill.Tests.Support;
using CombaDistill.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Modeling;

/// <summary>The GPU lane: the teacher on CUDA computes what it computes on the CPU.</summary>
public class LlamaGpuTests
{
    static readonly CancellationToken Ct = TestContext.Current.CancellationToken;

    [Fact]
    public void Stories260K_on_CUDA_reproduces_the_references_in_float32_and_stays_close_in_bfloat16()
    {
        Gpu.Require();
        using var temp = new TempDir();
        Llama2cImporter.Import(Shared.Stories260KBin, Shared.Tok512Bin, temp["m"], force: false, cancellationToken: Ct);
        var tokenizer = TokenizerLoader.Load(temp["m"]);
        var ids = tokenizer.Encode(File.ReadAllText(Shared.TinyStoriesValid)[..4096], addBos: true).Take(512).Select(i => (long)i).ToArray();
        double Nll(Tensor logits) =>
            -logits[0, ..^1].cpu().to(ScalarType.Float64).log_softmax(-1).gather(1, tensor(ids[1..]).unsqueeze(1)).mean().item<double>();

        using var scope = NewDisposeScope();
        using var _ = no_grad();
        using var cpu = LlamaForCausalLM.FromPretrained(temp["m"]);
        using var cuda = LlamaForCausalLM.FromPretrained(temp["m"], device: CUDA);
        Assert.Equal(DeviceType.CUDA, cuda.Device.type);
        var onCpu = cpu.forward(tensor(ids, [1, 512]));
        var onCuda = cuda.forward(tensor(ids, [1, 512], device: CUDA));
        LlamaForCausalLMTests.AssertClose(onCuda.cpu(), onCpu, 1e-5);
        Assert.Equal(1.3112, Nll(onCuda), 0.001);

        using (var cache = (KvCache)cuda.NewState(1))
        {
            var stepwise = cat(ids.Select(id => cuda.forward(tensor(new[] { id }, [1, 1], device: CUDA), cache)).ToArray(), 1);
            LlamaForCausalLMTests.AssertClose(stepwise.cpu(), onCpu, 1e-5);
        }

        var tokens = Generation.Generate(cuda, [1], new GenerationOptions(200, 0), Ct).ToList();
        var decoder = new StreamingDecoder(tokenizer, 1);
        Assert.Equal(Stories260KTests.GreedyReference, string.Concat(tokens.Select(decoder.Append)) + decoder.Flush());

        // bf16 costs a little likelihood, not a lot: a bug would cost nats
        using var bf16 = LlamaForCausalLM.FromPretrained(temp["m"], ScalarType.BFloat16, CUDA);
        Assert.InRange(Nll(bf16.forward(tensor(ids, [1, 512], device: CUDA))) - Nll(onCpu), -0.01, 0.02);
    }

    [Fact]
    public void Random_GQA_llama3_on_CUDA_matches_the_float64_reference()
    {
        Gpu.Require();
        using var scope = NewDisposeScope();
        var c = TinyModels.Llama3Gqa;
        var weights = TinyModels.RandomWeights(c, seed: 13);
        using var model = TinyModels.Build(c, weights);
        model.to(CUDA);
        var ids = TinyModels.RandomIds(c, 33, seed: 6);
        using var _ = no_grad();
        var logits = model.forward(tensor(ids, [1, ids.Length], device: CUDA))[0].cpu();
        LlamaForCausalLMTests.AssertClose(logits, LlamaReference.Logits(c, weights, ids), 1e-5);
    }
}
