using CombaDistill.Conversion;
using CombaDistill.Modeling;
using CombaDistill.Modeling.Comba;
using CombaDistill.Tests.Modeling;
using CombaDistill.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Modeling;

/// <summary>The student model: one sequence read chunkwise equals the same tokens decoded one at a time, and decoding memory.</summary>
public class CombaForCausalLMTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>A converted GQA student; with <paramref name="perturb"/> its new gate weights are made random, so β and the decay depend on the token.</summary>
    static CombaForCausalLM Student(TempDir temp, ConversionOptions options, bool perturb)
    {
        var teacherConfig = TinyModels.Llama3Gqa with { NumHiddenLayers = 3 };
        var teacherFolder = TeacherFolders.WriteRandom(temp["teacher"], teacherConfig, seed: 31);
        CombaConverter.Convert(teacherFolder, temp["student"], options, cancellationToken: Ct);
        var student = CombaForCausalLM.FromPretrained(temp["student"]);
        if (perturb)
        {
            var g = new Generator(77);
            using var _ = no_grad();
            foreach (var (name, p) in student.named_parameters())
                if (name.Contains("a_proj") || name.Contains("b_proj") || name.Contains("_conv.") || name.EndsWith(".d") || name.Contains("o_norm"))
                    p.add_(0.3 * randn(p.shape, generator: g));
        }
        return student;
    }

    public static TheoryData<string, string, bool> Variants => new()
    {
        { "default", "none", false },
        { "all options, token-dependent gates", "all-on", true },
        { "hybrid with layer 1 kept", "hybrid", true },
        { "Taylor features, normalised read-out", "taylor", true },
    };

    /// <summary>
    /// Logits of a 40-token sequence read at once (chunkwise, chunk 16, so three chunks) equal those of reading 11
    /// tokens and then decoding one token at a time from the state (the recurrent step), to 1e-4 in float32.
    /// </summary>
    [Theory]
    [MemberData(nameof(Variants))]
    public void Chunkwise_forward_equals_prefill_then_token_by_token_decoding(string label, string variant, bool perturb)
    {
        using var temp = new TempDir();
        var options = variant switch
        {
            "all-on" => new ConversionOptions { Comba = ConversionOptions.DefaultComba with { Rotary = "teacher", OutputNorm = true, ChunkSize = 16 } },
            "hybrid" => new ConversionOptions { KeepAttention = "1", Comba = ConversionOptions.DefaultComba with { ChunkSize = 16 } },
            "taylor" => new ConversionOptions { Comba = ConversionOptions.DefaultComba with { Rotary = "teacher", ChunkSize = 16, FeatureMap = "taylor", NormalizeReadout = true } },
            _ => new ConversionOptions { Comba = ConversionOptions.DefaultComba with { ChunkSize = 16 } },
        };
        using var student = Student(temp, options, perturb);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var ids = tensor(TinyModels.RandomIds(student.Config, 40, seed: 2), [1, 40]);
        var full = student.forward(ids);

        using var state = student.NewDecodingState(1);
        var pieces = new List<Tensor> { student.forward(ids.narrow(1, 0, 11), state) };
        for (var t = 11; t < 40; t++) pieces.Add(student.forward(ids.narrow(1, t, 1), state));
        var stepped = cat(pieces, dim: 1);

        Assert.Equal(40, state.Length);
        var difference = (full - stepped).abs().max().item<float>();
        Assert.True(difference <= 1e-4, $"{label}: chunkwise and token-by-token logits differ by {difference}");
        Assert.True(full.abs().max().item<float>() > 0.1, "logits too small for the comparison to mean anything");
    }

    [Fact]
    public void Greedy_generation_agrees_with_the_argmax_of_one_forward_over_the_generated_text()
    {
        using var temp = new TempDir();
        using var student = Student(temp, new ConversionOptions { Comba = ConversionOptions.DefaultComba with { ChunkSize = 16 } }, perturb: true);
        int[] prompt = [1, 17, 42];
        var generated = Generation.Generate(student, prompt, new GenerationOptions(MaxTokens: 25, Temperature: 0, StopAtEos: false), Ct).ToList();
        Assert.Equal(25, generated.Count);

        using var scope = NewDisposeScope();
        var all = prompt.Concat(generated).Select(i => (long)i).ToArray();
        var logits = student.forward(tensor(all, [1, all.Length]))[0];
        var predicted = logits.argmax(-1).data<long>().ToArray();
        for (var i = 0; i < generated.Count; i++)
            Assert.Equal(generated[i], (int)predicted[prompt.Length - 1 + i]);
    }

    [Fact]
    public void A_pure_students_decoding_state_does_not_grow_and_a_hybrid_caches_only_its_attention_layers()
    {
        using var temp = new TempDir();
        using var student = Student(temp, new ConversionOptions(), perturb: false);
        using var noGrad = no_grad();
        using var state = student.NewDecodingState(2);
        Assert.Equal(0, state.CachedLayers);
        using (NewDisposeScope()) student.forward(zeros([2, 5], ScalarType.Int64), state);
        var afterPrompt = state.RecurrentBytes;
        for (var t = 0; t < 60; t++)
            using (NewDisposeScope()) student.forward(ones([2, 1], ScalarType.Int64), state);
        Assert.Equal(65, state.Length);
        Assert.Equal(afterPrompt, state.RecurrentBytes);
        // per Comba layer: state (2, 6 heads, 8, 8) in float32, and three conv tails (2, channels, 3)
        Assert.Equal(3 * (2 * 6 * 8 * 8 * 4 + 2 * (48 + 16 + 16) * 3 * 4), afterPrompt);

        using var hybridTemp = new TempDir();
        using var hybrid = Student(hybridTemp, new ConversionOptions { KeepAttention = "0" }, perturb: false);
        using var hybridState = hybrid.NewDecodingState(1);
        using (NewDisposeScope()) hybrid.forward(zeros([1, 9], ScalarType.Int64), hybridState);
        Assert.Equal(1, hybridState.CachedLayers);
        Assert.Equal(9, hybridState.Layer(0).Cache!.Length);
        Assert.Null(hybridState.Layer(0).Recurrent);
        Assert.NotNull(hybridState.Layer(1).Recurrent);
        Assert.Throws<ArgumentException>(() => hybrid.forward(zeros([2, 1], ScalarType.Int64), hybridState));
    }

    /// <summary>With Taylor features and a normalised read-out each head's state is (1 + D + D(D+1)/2) × (D + 1), and inspect says so.</summary>
    [Fact]
    public void A_taylor_students_state_has_the_expanded_size_that_inspect_reports()
    {
        using var temp = new TempDir();
        var options = new ConversionOptions { Comba = ConversionOptions.DefaultComba with { FeatureMap = "taylor", NormalizeReadout = true, ShortConv = 0 } };
        using var student = Student(temp, options, perturb: false);
        using var noGrad = no_grad();
        using var state = student.NewDecodingState(1);
        using (NewDisposeScope()) student.forward(zeros([1, 5], ScalarType.Int64), state);
        // 3 Comba layers × 6 heads × 45 × 9 × float32
        Assert.Equal(3 * 6 * 45 * 9 * 4, state.RecurrentBytes);
        Assert.Equal(state.RecurrentBytes, StudentSummary.Inspect(temp["student"]).RecurrentStateBytes);
    }

    [Fact]
    public void Student_config_round_trips_through_json_with_every_option()
    {
        var config = new CombaStudentConfig
        {
            Architecture = TinyModels.Qwen2Tied with { TorchDtype = "bfloat16" },
            Comba = new CombaConfig { Rotary = "teacher", ShortConv = 0, OutputNorm = true, ChunkSize = 32, Scale = 0.5, InitialD = -1, InitialLambda = 0.25, NormEps = 1e-5 },
            AttentionLayers = [1],
        };
        var json = config.ToJson();
        Assert.Equal("comba", json["model_type"]!.GetValue<string>());
        Assert.Equal("qwen2", json["teacher_model_type"]!.GetValue<string>());
        var back = CombaStudentConfig.FromJson(System.Text.Json.Nodes.JsonNode.Parse(json.ToJsonString())!.AsObject(), "config.json");
        Assert.Equal(config.Comba, back.Comba);
        Assert.Equal(config.AttentionLayers, back.AttentionLayers);
        Assert.Equal(config.Architecture.ToJson().ToJsonString(), back.Architecture.ToJson().ToJsonString());

        json["attention_layers"] = new System.Text.Json.Nodes.JsonArray(5);
        var e = Assert.Throws<InvalidInputException>(() => CombaStudentConfig.FromJson(json, "student/config.json"));
        Assert.Contains("student/config.json", e.Message);
        Assert.Contains("attention_layers", e.Message);
        json["attention_layers"] = new System.Text.Json.Nodes.JsonArray();
        json["model_type"] = "llama";
        Assert.Contains("'comba'", Assert.Throws<InvalidInputException>(() => CombaStudentConfig.FromJson(json, "c.json")).Message);
    }
}
