using CombaDistill.Distillation;
using CombaDistill.Modeling.Comba;
using CombaDistill.Tests.Distillation;
using CombaDistill.Tests.Modeling;
using CombaDistill.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Ops;

/// <summary>
/// Activation checkpointing recomputes each layer in the backward pass: every gradient must be what the ordinary
/// backward gives, for a whole student (a Comba layer with a short convolution and a kept softmax layer) and for the
/// alignment objective, whose inputs (the teacher's hidden states) need no gradient.
/// </summary>
public sealed class ActivationCheckpointTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    static CombaForCausalLM Student(string rotary = "none")
    {
        var c = TinyModels.Llama3Gqa;
        manual_seed(11);
        var student = new CombaForCausalLM(new CombaStudentConfig
        {
            Architecture = c, Comba = new CombaConfig { ChunkSize = 16, ShortConv = 4, OutputNorm = true, Rotary = rotary }, AttentionLayers = [1],
        });
        student.load_state_dict(TinyModels.RandomWeights(c, 5), strict: false);
        return student;
    }

    static Dictionary<string, Tensor> Gradients(CombaForCausalLM student, bool checkpointed, Tensor ids, Tensor weights)
    {
        student.zero_grad();
        student.model.ActivationCheckpointing = checkpointed;
        var hidden = student.model.forward(ids);
        (hidden * weights).sum().backward();
        student.model.ActivationCheckpointing = false;
        // lm_head is not part of model.forward: it gets no gradient either way
        return student.named_parameters().Where(p => p.parameter.grad is not null).ToDictionary(p => p.name, p => p.parameter.grad!.clone());
    }

    [Fact]
    public void The_function_runs_again_in_the_backward_and_its_parameters_get_gradients_though_the_input_needs_none()
    {
        var w = randn([4, 4], dtype: ScalarType.Float64).requires_grad_(true);
        var x = randn([3, 4], dtype: ScalarType.Float64);   // no gradient wanted, like a teacher's hidden state
        var calls = 0;
        Tensor F(Tensor input)
        {
            calls++;
            return matmul(input, w).tanh();
        }
        var y = CombaDistill.Ops.ActivationCheckpoint.Run(F, x);
        Assert.Equal(1, calls);
        Assert.True(y.requires_grad);
        var upstream = randn([3, 4], dtype: ScalarType.Float64);
        (y * upstream).sum().backward();
        Assert.Equal(2, calls);
        // d/dW of Σ upstream ⊙ tanh(x W) = xᵀ (upstream ⊙ (1 − tanh²))
        var t = matmul(x, w.detach()).tanh();
        var expected = matmul(x.t(), upstream * (1 - t * t));
        Assert.True(w.grad!.allclose(expected, rtol: 1e-12, atol: 1e-12));
        using (no_grad()) CombaDistill.Ops.ActivationCheckpoint.Run(F, x);
        Assert.Equal(3, calls);   // without autograd: one plain call
    }

    [Fact]
    public void A_checkpointed_function_with_nothing_to_differentiate_passes_the_backward_by()
    {
        var w = randn([4, 4]);                                  // frozen
        var x = randn([3, 4]);                                  // no gradient wanted
        var trained = randn([4]).requires_grad_(true);
        var y = CombaDistill.Ops.ActivationCheckpoint.Run(input => matmul(input, w).tanh(), x);
        (y.sum() * trained.sum()).backward();
        Assert.NotNull(trained.grad);
        Assert.Equal(y.sum().item<float>(), trained.grad![0].item<float>(), 4);
    }

    [Fact]
    public void A_students_gradients_are_the_same_with_checkpointed_layers()
    {
        using var student = Student();
        var ids = tensor(TinyModels.RandomIds(TinyModels.Llama3Gqa, 40, 3).Concat(TinyModels.RandomIds(TinyModels.Llama3Gqa, 40, 4)).ToArray(), [2, 40]);
        var weights = randn([2, 40, TinyModels.Llama3Gqa.HiddenSize], generator: new Generator(7));
        var plain = Gradients(student, false, ids, weights);
        var checkpointed = Gradients(student, true, ids, weights);
        Assert.Equal(plain.Keys.Order(), checkpointed.Keys.Order());
        Assert.Contains("model.layers.0.self_attn.q_conv.weight", plain.Keys);
        Assert.Contains("model.layers.1.self_attn.q_proj.weight", plain.Keys);
        foreach (var (name, g) in plain)
        {
            Assert.True(g.abs().max().item<float>() > 0 || name.Contains("lambda"), $"{name}: no gradient at all (the check would be empty)");
            Assert.True(g.allclose(checkpointed[name], rtol: 1e-5, atol: 1e-7), $"{name}: checkpointed gradient differs by {(g - checkpointed[name]).abs().max().item<float>()}");
        }
    }

    /// <summary>With rotary "teacher" the mixer reads the rotary tables again in the backward pass, after the loss was computed.</summary>
    [Theory]
    [InlineData("none")]
    [InlineData("teacher")]
    public void The_alignment_objectives_gradients_are_the_same_when_checkpointed(string rotary)
    {
        var c = TinyModels.Llama3Gqa;
        var teacherWeights = TinyModels.RandomWeights(c, 8);
        using var teacher = TinyModels.Build(c, teacherWeights);
        using var student = Student(rotary);
        foreach (var p in teacher.parameters()) p.requires_grad = false;
        var ids = tensor(TinyModels.RandomIds(c, 33, 9), [1, 33]);
        Dictionary<string, Tensor> Run(bool checkpointed)
        {
            student.zero_grad();
            AttentionAlignment.Compute(teacher, student, ids, [0], checkpointed: checkpointed).Loss.backward();
            return student.named_parameters().Where(p => p.parameter.grad is not null).ToDictionary(p => p.name, p => p.parameter.grad!.clone());
        }
        Dictionary<string, Tensor> plain, checkpointed;
        // as in training, the scope that computed the loss has ended before its backward runs
        using (NewDisposeScope()) plain = Run(false).ToDictionary(kv => kv.Key, kv => kv.Value.MoveToOuterDisposeScope());
        using (NewDisposeScope()) checkpointed = Run(true).ToDictionary(kv => kv.Key, kv => kv.Value.MoveToOuterDisposeScope());
        Assert.Contains("model.layers.0.self_attn.q_proj.weight", plain.Keys);
        foreach (var (name, g) in plain)
            Assert.True(g.allclose(checkpointed[name], rtol: 1e-5, atol: 1e-7), $"{name}: checkpointed gradient differs");
    }

    [Fact]
    public void A_checkpointed_toy_run_follows_the_plain_runs_trajectory()
    {
        set_num_threads(1);
        var plainRecipe = dir["plain.yaml"];
        File.WriteAllText(plainRecipe, DistillationRunTests.RecipeText());
        var checkpointedRecipe = dir["checkpointed.yaml"];
        File.WriteAllText(checkpointedRecipe, DistillationRunTests.RecipeText().Replace("    micro_batch: 2\n", "    micro_batch: 2\n    activation_checkpointing: true\n"));
        Assert.All(RecipeLoader.Load(checkpointedRecipe).Stages, s => Assert.True(s.ActivationCheckpointing));
        var ct = TestContext.Current.CancellationToken;
        var plain = DistillationRun.Run(RecipeLoader.Load(plainRecipe), dir["plain"], new DistillOptions { TensorBoard = false }, cancellationToken: ct);
        var checkpointed = DistillationRun.Run(RecipeLoader.Load(checkpointedRecipe), dir["checkpointed"], new DistillOptions { TensorBoard = false }, cancellationToken: ct);
        foreach (var stage in new[] { "01-align", "02-kd" })
        {
            var a = StageMetrics.Read(Path.Combine(dir["plain"], stage, StageMetrics.FileName)).Train;
            var b = StageMetrics.Read(Path.Combine(dir["checkpointed"], stage, StageMetrics.FileName)).Train;
            Assert.Equal(a.Count, b.Count);
            foreach (var (x, y) in a.Zip(b))
                Assert.True(Math.Abs(x.Loss - y.Loss) <= 1e-5 * Math.Abs(x.Loss), $"{stage} step {x.Step}: {y.Loss} checkpointed, {x.Loss} plain");
        }
        Assert.Equal(plain.StudentPerplexity, checkpointed.StudentPerplexity, 1e-4 * plain.StudentPerplexity);
    }
}
