using CombaDistill.Conversion;
using CombaDistill.Distillation;
using CombaDistill.IO;
using CombaDistill.Modeling.Comba;
using CombaDistill.Modeling.Llama;
using CombaDistill.Tests.Support;
using CombaDistill.Tokenization;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Modeling;

/// <summary>
/// A teacher split by layer: which layer goes where, and that a split computes what the whole model computes. On the
/// CPU the split is over [cpu, cpu], which runs every device move of the forward pass; the GPU lane splits over two GPUs.
/// </summary>
public sealed class LayerPlacementTests
{
    static Device[] Cpus(int n) => Enumerable.Repeat(CPU, n).ToArray();

    [Fact]
    public void Layers_are_split_into_contiguous_runs_with_the_later_devices_taking_the_remainder()
    {
        Assert.Equal([0, 0, 1, 1, 1], LayerPlacement.Balanced(5, CPU, Cpus(2)).LayerSlots);
        Assert.Equal(Enumerable.Repeat(0, 8).Concat(Enumerable.Repeat(1, 8)), LayerPlacement.Balanced(16, CPU, Cpus(2)).LayerSlots);
        Assert.Equal([0, 0, 1, 1, 2, 2, 2], LayerPlacement.Balanced(7, CPU, Cpus(3)).LayerSlots);
        Assert.Equal([1, 2], LayerPlacement.Balanced(2, CPU, Cpus(3)).LayerSlots);    // more devices than layers: the first holds none

        var gpus = new[] { new Device("cuda:0"), new Device("cuda:1") };
        var placement = LayerPlacement.Balanced(5, gpus[0], gpus);
        Assert.Equal("layers 0–1 on cuda:0, 2–4 on cuda:1; embeddings and head on cuda:0", placement.Describe());
        Assert.Equal("cuda:1", placement.LayerDevice(2).ToString());
        Assert.True(placement.IsSplit);
        Assert.False(LayerPlacement.OnOneDevice(5, gpus[1]).IsSplit);
        Assert.True(LayerPlacement.Balanced(5, CPU, Cpus(2)).IsSplit);
    }

    [Fact]
    public void A_split_model_computes_what_the_whole_one_does_with_and_without_a_cache()
    {
        var config = TinyModels.Llama3Gqa with { NumHiddenLayers = 3 };
        var weights = TinyModels.RandomWeights(config, 7);
        using var whole = TinyModels.Build(config, weights);
        using var split = new LlamaForCausalLM(config, ScalarType.Float32, LayerPlacement.Balanced(3, CPU, Cpus(2)));
        split.load_state_dict(weights, strict: true);
        split.eval();
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var ids = tensor(TinyModels.RandomIds(config, 24, 3), [2, 12]);
        Assert.True(whole.forward(ids).eq(split.forward(ids)).all().item<bool>());

        using var cache = (KvCache)split.NewState(2);
        var stepwise = cat(Enumerable.Range(0, 12).Select(t => split.forward(ids.narrow(1, t, 1), cache)).ToArray(), 1);
        Assert.True(stepwise.allclose(whole.forward(ids), rtol: 1e-5, atol: 1e-5));
    }

    [Fact]
    public void Alignment_and_distillation_losses_are_the_same_with_a_split_teacher()
    {
        using var dir = new TempDir();
        var ct = TestContext.Current.CancellationToken;
        Llama2cImporter.Import(Shared.Stories260KBin, Shared.Tok512Bin, dir["teacher"], force: false, cancellationToken: ct);
        CombaConverter.Convert(dir["teacher"], dir["student"], new ConversionOptions(), cancellationToken: ct);
        using var whole = LlamaForCausalLM.FromPretrained(dir["teacher"], ScalarType.Float32);
        using var split = LlamaForCausalLM.FromPretrained(dir["teacher"], ScalarType.Float32, LayerPlacement.Balanced(whole.Config.NumHiddenLayers, CPU, Cpus(2)));
        using var student = CombaForCausalLM.FromPretrained(dir["student"]);
        var tokenizer = TokenizerLoader.Load(dir["teacher"]);
        using var scope = NewDisposeScope();
        var ids = tensor(tokenizer.Encode(File.ReadAllText(Shared.TinyStoriesValid)[..2000], addBos: true).Take(64).Select(i => (long)i).ToArray(), [2, 32]);

        var layers = AttentionAlignment.ConvertedLayers(student);
        var (wholeLoss, wholePerLayer) = AttentionAlignment.Compute(whole, student, ids, layers);
        var (splitLoss, splitPerLayer) = AttentionAlignment.Compute(split, student, ids, layers);
        Assert.Equal(wholeLoss.item<float>(), splitLoss.item<float>());
        Assert.Equal(wholePerLayer, splitPerLayer);
        using (no_grad())
            Assert.True(whole.model.forward(ids).eq(split.model.forward(ids)).all().item<bool>());
    }
}
