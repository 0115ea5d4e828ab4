using CombaDistill.Conversion;
using CombaDistill.IO;
using CombaDistill.Modeling.Comba;
using CombaDistill.Modeling.Llama;
using CombaDistill.Tests.Modeling;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Conversion;

/// <summary>Parameter counts from configs alone (meta device), option parsing, and the initial values of the new tensors.</summary>
public class ConversionPlanTests(ITestOutputHelper output)
{
    static readonly LlamaConfig Llama32OneB = new()
    {
        ModelType = "llama", VocabSize = 128256, HiddenSize = 2048, IntermediateSize = 8192, NumHiddenLayers = 16,
        NumAttentionHeads = 32, NumKeyValueHeads = 8, HeadDim = 64, MaxPositionEmbeddings = 131072, RmsNormEps = 1e-5,
        RopeTheta = 500000, RopeScaling = new RopeScaling("llama3", 32, 1, 4, 8192), TieWordEmbeddings = true, TorchDtype = "bfloat16",
    };

    [Fact]
    public void Llama_3_2_1B_shaped_student_adds_under_one_percent_with_every_option_on()
    {
        foreach (var comba in new[] { ConversionOptions.DefaultComba, ConversionOptions.DefaultComba with { OutputNorm = true, Rotary = "teacher" } })
        {
            var plan = ConversionPlan.Create(new CombaStudentConfig { Architecture = Llama32OneB, Comba = comba });
            var report = ConversionReport.FromPlan(plan, "Llama-3.2-1B (config only)", "bfloat16");

            // independent arithmetic: the published 1.24B of Llama 3.2 1B (tied embeddings)
            const long perLayer = 2048 * 2048 * 2 + 2048 * 512 * 2 + 3L * 2048 * 8192 + 2 * 2048;
            Assert.Equal(128256L * 2048 + 16 * perLayer + 2048, report.TeacherParameters);
            Assert.Equal(1_235_814_400, report.TeacherParameters);
            // per Comba layer: a_proj and b_proj (2048 × 32 each), A_log, dt_bias, λ, d (32 each), short convolutions on
            // q, k, v ((2048 + 512 + 512) × 4), and with the output norm one head_dim vector
            var extraPerLayer = 2 * 2048 * 32 + 4 * 32 + (2048 + 512 + 512) * 4 + (comba.OutputNorm ? 64 : 0);
            Assert.Equal(16L * extraPerLayer, report.ExtraParameters);
            Assert.True(report.ExtraShare <= 0.01, $"extra share {report.ExtraShare:P3}");
            output.WriteLine($"output norm {comba.OutputNorm}: teacher {report.TeacherParameters:N0}, extra {report.ExtraParameters:N0} = {report.ExtraShare:P3}");
        }
    }

    /// <summary>The shares the README and docs/conversion.md quote, for the converter's defaults.</summary>
    [Fact]
    public void The_extra_share_is_0_186_percent_at_the_1B_shape_and_3_015_percent_for_stories260K()
    {
        var stories260K = new LlamaConfig
        {
            ModelType = "llama", VocabSize = 512, HiddenSize = 64, IntermediateSize = 172, NumHiddenLayers = 5, NumAttentionHeads = 8,
            NumKeyValueHeads = 4, HeadDim = 8, MaxPositionEmbeddings = 512, RmsNormEps = 1e-5, RopeTheta = 10000, TieWordEmbeddings = true, TorchDtype = "float32",
        };
        ConversionReport Report(LlamaConfig teacher) =>
            ConversionReport.FromPlan(ConversionPlan.Create(new CombaStudentConfig { Architecture = teacher, Comba = ConversionOptions.DefaultComba }), "config only", "float32");

        var small = Report(stories260K);
        Assert.Equal(260_032, small.TeacherParameters);
        Assert.Equal(7_840, small.ExtraParameters);
        Assert.Equal("3.015", (100 * small.ExtraShare).ToString("F3", System.Globalization.CultureInfo.InvariantCulture));
        var large = Report(Llama32OneB);
        Assert.Equal(2_295_808, large.ExtraParameters);
        Assert.Equal("0.186", (100 * large.ExtraShare).ToString("F3", System.Globalization.CultureInfo.InvariantCulture));
    }

    [Fact]
    public void Meta_plan_matches_the_parameters_of_real_modules()
    {
        var student = new CombaStudentConfig
        {
            Architecture = TinyModels.Qwen2Tied,
            Comba = new CombaConfig { OutputNorm = true },
            AttentionLayers = [1],
        };
        var plan = ConversionPlan.Create(student);
        using var real = new CombaForCausalLM(student);
        Assert.Equal(real.state_dict().Select(e => (e.Key, e.Value.shape)), plan.StudentTensors.Select(t => (t.Name, t.Shape)));
        using var teacher = new LlamaForCausalLM(TinyModels.Qwen2Tied);
        Assert.Equal(teacher.state_dict().Select(e => (e.Key, e.Value.shape)), plan.TeacherTensors);
        Assert.Equal(teacher.parameters().Sum(p => p.numel()), plan.TeacherParameterCount);
        // layer 1 is kept attention: only layer 0 has new tensors
        Assert.All(plan.StudentTensors.Where(t => t.Source == TensorSource.Initialised), t => Assert.Equal(0, t.Layer));
        Assert.Equal(new[] { "a_proj.weight", "b_proj.weight", "A_log", "dt_bias", "lambda_logit", "d", "q_conv.weight", "k_conv.weight", "v_conv.weight", "o_norm.weight" }
                .Select(k => "model.layers.0.self_attn." + k).Order(StringComparer.Ordinal),
            plan.StudentTensors.Where(t => t.Source == TensorSource.Initialised && t.Layer == 0).Select(t => t.Name).Order(StringComparer.Ordinal),
            StringComparer.Ordinal);
    }

    [Theory]
    [InlineData("none", 16, new int[0])]
    [InlineData("", 16, new int[0])]
    [InlineData("all", 3, new[] { 0, 1, 2 })]
    [InlineData("every:8", 16, new[] { 7, 15 })]
    [InlineData("every:4", 10, new[] { 3, 7 })]
    [InlineData("0,15", 16, new[] { 0, 15 })]
    [InlineData(" 15, 0 ,0", 16, new[] { 0, 15 })]
    [InlineData("0-3,12", 16, new[] { 0, 1, 2, 3, 12 })]
    public void Keep_attention_parses(string spec, int layers, int[] expected) =>
        Assert.Equal(expected, AttentionLayers.Parse(spec, layers));

    [Theory]
    [InlineData("16", "layer 16 does not exist")]
    [InlineData("-1", "layer -1 does not exist")]
    [InlineData("every:0", "positive")]
    [InlineData("every:x", "positive")]
    [InlineData("first", "'first' is not a layer index")]
    [InlineData("5-2", "runs backwards")]
    [InlineData("1,,2", "is not a layer index")]
    public void Keep_attention_rejects_with_the_option_named(string spec, string problem)
    {
        var e = Assert.Throws<InvalidInputException>(() => AttentionLayers.Parse(spec, 16));
        Assert.Contains("--keep-attention", e.Message);
        Assert.Contains(problem, e.Message);
    }

    [Theory]
    [InlineData("5GB", 5_000_000_000)]
    [InlineData("500MB", 500_000_000)]
    [InlineData("2GiB", 2L << 30)]
    [InlineData("1.5 kb", 1500)]
    [InlineData("1048576", 1048576)]
    public void Byte_sizes_parse(string text, long bytes) => Assert.Equal(bytes, ByteSize.Parse(text));

    [Theory]
    [InlineData("0")]
    [InlineData("-5MB")]
    [InlineData("lots")]
    [InlineData("5XB")]
    public void Bad_byte_sizes_are_rejected(string text) =>
        Assert.Contains("--max-shard-size", Assert.Throws<InvalidInputException>(() => ByteSize.Parse(text)).Message);

    /// <summary>The initial gates, computed by the converted module itself on real inputs, are what the documentation says.</summary>
    [Fact]
    public void Initial_gates_are_token_independent_with_log_spaced_memories()
    {
        var heads = 6;
        var shape = new long[] { heads };
        var comba = ConversionOptions.DefaultComba;
        using var dtBias = CombaInitialization.Create("dt_bias", shape, comba);
        using var aLog = CombaInitialization.Create("A_log", shape, comba);
        // α = exp(−exp(A_log) · softplus(dt_bias + x·0))
        var alpha = (-(aLog.exp()) * nn.functional.softplus(dtBias)).exp().data<double>().ToArray();
        Assert.Equal(0.5, alpha[0], 12);
        Assert.Equal(Math.Exp(-1.0 / 512), alpha[^1], 12);
        var rates = alpha.Select(a => -Math.Log(a)).ToArray();
        for (var h = 1; h < heads; h++)
            Assert.Equal(rates[1] / rates[0], rates[h] / rates[h - 1], 9);      // geometric spacing

        using var lambda = CombaInitialization.Create("lambda_logit", shape, comba with { InitialLambda = 0.3 });
        Assert.All(lambda.sigmoid().data<double>().ToArray(), l => Assert.Equal(0.3, l, 12));
        using var d = CombaInitialization.Create("d", shape, comba);
        Assert.All(d.data<double>().ToArray(), v => Assert.Equal(-1, v));
        using var conv = CombaInitialization.Create("k_conv.weight", [3, 1, 4], comba);
        Assert.Equal(new double[] { 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1 }, conv.data<double>().ToArray());
        using var b = CombaInitialization.Create("b_proj.weight", [6, 10], comba);
        Assert.Equal(0, b.abs().sum().item<double>());

        Assert.Contains("no initialisation", Assert.Throws<InvalidOperationException>(() => CombaInitialization.Create("mystery", [2], comba)).Message);
        Assert.All(ConversionPlan.Create(new CombaStudentConfig { Architecture = TinyModels.Llama3Gqa, Comba = comba with { OutputNorm = true } })
            .StudentTensors.Where(t => t.Source == TensorSource.Initialised),
            t => Assert.NotEmpty(CombaInitialization.Describe(t.MixerKey!, comba)));
        Assert.Throws<InvalidOperationException>(() => CombaInitialization.Describe("mystery", comba));
    }
}
