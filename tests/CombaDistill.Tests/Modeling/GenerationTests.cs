using CombaDistill.Modeling;
using CombaDistill.Modeling.Llama;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Modeling;

public class GenerationTests
{
    static readonly CancellationToken Ct = TestContext.Current.CancellationToken;
    static readonly LlamaConfig Config = TinyModels.Llama3Gqa;
    static readonly Dictionary<string, Tensor> Weights = TinyModels.RandomWeights(Config, seed: 77);

    [Fact]
    public void Greedy_decoding_with_the_cache_equals_argmax_over_full_forwards()
    {
        using var model = TinyModels.Build(Config, Weights);
        int[] prompt = [1, 17, 42];
        var generated = Generation.Generate(model, prompt, new GenerationOptions(30, Temperature: 0, StopAtEos: false), Ct).ToList();
        Assert.Equal(30, generated.Count);

        // the slow way: the whole sequence again at every step, no state
        var sequence = prompt.Select(i => (long)i).ToList();
        using var _ = no_grad();
        for (var step = 0; step < 30; step++)
        {
            using var scope = NewDisposeScope();
            var last = model.forward(tensor(sequence.ToArray(), [1, sequence.Count]))[0, -1];
            sequence.Add(last.argmax().item<long>());
        }
        Assert.Equal(sequence.Skip(prompt.Length).Select(i => (int)i), generated);
        Assert.True(generated.Distinct().Count() > 3, "a degenerate model would make this test weak");
    }

    [Fact]
    public void End_of_sequence_stops_generation_and_is_not_yielded()
    {
        using var free = TinyModels.Build(Config, Weights);
        var unstopped = Generation.Generate(free, [1], new GenerationOptions(20, 0, StopAtEos: false), Ct).ToList();
        var eos = unstopped[6];
        using var model = TinyModels.Build(Config with { EosTokenIds = [99, eos] }, Weights);
        var stopped = Generation.Generate(model, [1], new GenerationOptions(20, 0), Ct).ToList();
        Assert.Equal(unstopped.TakeWhile(t => t != eos), stopped);
        Assert.Equal(unstopped, Generation.Generate(model, [1], new GenerationOptions(20, 0, StopAtEos: false), Ct));
    }

    [Fact]
    public void Sampling_is_reproducible_for_a_seed_and_varies_across_seeds()
    {
        using var model = TinyModels.Build(Config, Weights);
        List<int> Run(long seed) => Generation.Generate(model, [1], new GenerationOptions(25, Temperature: 1.0, TopP: 0.95, Seed: seed, StopAtEos: false), Ct).ToList();
        var a = Run(1234);
        Assert.Equal(a, Run(1234));
        Assert.Contains(Enumerable.Range(1, 5), s => !Run(s).SequenceEqual(a));
    }

    [Fact]
    public void A_tiny_top_p_keeps_only_the_most_likely_token()
    {
        using var model = TinyModels.Build(Config, Weights);
        var greedy = Generation.Generate(model, [1], new GenerationOptions(15, 0, StopAtEos: false), Ct);
        var nucleus = Generation.Generate(model, [1], new GenerationOptions(15, Temperature: 2.0, TopP: 1e-9, Seed: 3, StopAtEos: false), Ct);
        Assert.Equal(greedy, nucleus);
    }

    [Fact]
    public void Sampled_frequencies_follow_the_tempered_softmax_and_respect_top_p()
    {
        float[] logits = [2.0f, 1.0f, 0.5f, 0.0f, -1.0f, 1.0f];
        const double temperature = 0.7;
        var weights = logits.Select(l => Math.Exp(l / temperature)).ToArray();
        var p = weights.Select(w => w / weights.Sum()).ToArray();   // ≈ .60 .14 .07 .03 .01 .14
        var random = new Random(11);
        const int draws = 20000;
        var counts = new int[logits.Length];
        for (var i = 0; i < draws; i++) counts[Generation.PickToken(logits, temperature, 1.0, random)]++;
        for (var k = 0; k < p.Length; k++)
            Assert.InRange(counts[k] / (double)draws, p[k] - 5 * Math.Sqrt(p[k] * (1 - p[k]) / draws), p[k] + 5 * Math.Sqrt(p[k] * (1 - p[k]) / draws));

        // top-p 0.7: token 0 (.60) is not enough, the next (.14, the lower id of the tie) crosses 0.7; nothing else is drawn
        counts = new int[logits.Length];
        for (var i = 0; i < draws; i++) counts[Generation.PickToken(logits, temperature, 0.7, random)]++;
        Assert.Equal(draws, counts[0] + counts[1]);
        Assert.InRange(counts[0] / (double)draws, p[0] / (p[0] + p[1]) - 0.015, p[0] / (p[0] + p[1]) + 0.015);
    }

    [Fact]
    public void Bad_options_and_cancellation_are_reported()
    {
        using var model = TinyModels.Build(Config, Weights);
        Assert.Throws<ArgumentException>(() => Generation.Generate(model, [], new GenerationOptions(5, 0), Ct).ToList());
        Assert.Throws<ArgumentException>(() => Generation.Generate(model, [1], new GenerationOptions(5, -1), Ct).ToList());
        Assert.Throws<ArgumentException>(() => Generation.Generate(model, [1], new GenerationOptions(5, 1, TopP: 0), Ct).ToList());
        Assert.Throws<ArgumentException>(() => Generation.Generate(model, [Config.VocabSize], new GenerationOptions(5, 0), Ct).ToList());
        using var cts = new CancellationTokenSource();
        var count = 0;
        Assert.ThrowsAny<OperationCanceledException>(() =>
        {
            foreach (var _ in Generation.Generate(model, [1], new GenerationOptions(50, 0, StopAtEos: false), cts.Token))
                if (++count == 3) cts.Cancel();
        });
        Assert.Equal(3, count);
    }
}
