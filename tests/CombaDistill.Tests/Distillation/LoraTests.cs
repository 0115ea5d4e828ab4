using CombaDistill.Distillation;
using CombaDistill.IO;
using CombaDistill.Modeling.Comba;
using CombaDistill.Tests.Modeling;
using CombaDistill.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Distillation;

/// <summary>LoRA adapters on a student's projections: exact at attachment, only A and B train, merging is exact, recipes, a short stage.</summary>
[Collection(ProcessWideState.Name)]
public sealed class LoraTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    static readonly LoraRecipe AllProjections = new() { Rank = 4, Alpha = 8, Targets = LoraRecipe.Projections };

    /// <summary>A hybrid GQA student (layer 1 keeps softmax attention) with random weights, so every kind of projection is present.</summary>
    static CombaForCausalLM Student()
    {
        manual_seed(11);
        var student = new CombaForCausalLM(new CombaStudentConfig
        {
            Architecture = TinyModels.Llama3Gqa with { NumHiddenLayers = 3 },
            Comba = new CombaConfig { Rotary = "teacher", ChunkSize = 16 },
            AttentionLayers = [1],
        });
        // nn.Linear starts its biases and weights small; gates at zero make β and the decay token-independent. Perturb
        // everything so the outputs depend on every projection.
        using var _ = no_grad();
        foreach (var p in student.parameters()) p.add_(0.2 * randn_like(p));
        return student;
    }

    static Tensor Ids(CombaForCausalLM student) => tensor(TinyModels.RandomIds(student.Config, 2 * 24, seed: 3), [2, 24]);

    /// <summary>Gives every adapter's B random values (it starts at zero), as training would.</summary>
    static void Randomise(LoraAdapters lora, ulong seed)
    {
        var g = new Generator(seed);
        using var _ = no_grad();
        foreach (var (name, p) in lora.Parameters)
            if (name.EndsWith("lora_B.weight", StringComparison.Ordinal)) p.copy_(0.3 * randn(p.shape, generator: g));
    }

    [Fact]
    public void Attached_adapters_leave_the_outputs_exactly_unchanged()
    {
        using var student = Student();
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var ids = Ids(student);
        var before = student.forward(ids);
        using var lora = LoraAdapters.Attach(student, AllProjections, seed: 1);
        // 3 layers × (q, k, v, o, gate, up, down)
        Assert.Equal(3 * 7 * 2, lora.Parameters.Count);
        Assert.Contains(lora.Parameters, p => p.Name == "model.layers.1.self_attn.q_proj.lora_A.weight");
        Assert.Contains(lora.Parameters, p => p.Name == "model.layers.2.mlp.down_proj.lora_B.weight");
        var after = student.forward(ids);
        Assert.True(before.equal(after).all().item<bool>(), "B = 0 at attachment, so the logits must be bit-identical");

        // and the hooks really are in the forward pass: a non-zero B changes the logits
        Randomise(lora, 5);
        Assert.True((student.forward(ids) - before).abs().max().item<float>() > 1e-3);
    }

    [Fact]
    public void Only_the_adapters_receive_gradients()
    {
        using var student = Student();
        using var lora = LoraAdapters.Attach(student, AllProjections with { Targets = ["q_proj", "v_proj", "up_proj"] }, seed: 1);
        var trainable = TrainableParameters.Apply(student, TrainableSelection.Of("none"), lora);
        Assert.Equal(lora.Parameters.Select(p => p.Name), trainable.Select(p => p.Name));
        Randomise(lora, 6);     // with B = 0 the gradient of A is exactly zero; make both visible

        using var scope = NewDisposeScope();
        var logits = student.forward(Ids(student));
        logits.square().mean().backward();
        foreach (var (name, p) in student.named_parameters())
            Assert.True(p.grad is null, $"{name} is not an adapter but received a gradient");
        foreach (var (name, p) in lora.Parameters)
        {
            Assert.True(p.grad is not null, $"{name} received no gradient");
            Assert.True(p.grad!.abs().max().item<float>() > 0, $"{name}'s gradient is zero");
        }
    }

    [Fact]
    public void A_weight_may_not_train_both_directly_and_through_an_adapter()
    {
        using var student = Student();
        using var lora = LoraAdapters.Attach(student, AllProjections with { Targets = ["o_proj"] }, seed: 1);
        var e = Assert.Throws<InvalidInputException>(() => TrainableParameters.Apply(student, TrainableSelection.Of("attention"), lora));
        Assert.Contains("model.layers.0.self_attn.o_proj.weight", e.Message);
        Assert.Contains("LoRA adapter", e.Message);
        // the Comba tensors beside the adapted projections may train
        var comba = TrainableParameters.Apply(student, TrainableSelection.Of("comba"), lora);
        Assert.Contains(comba, p => p.Name == "model.layers.0.self_attn.A_log");
        Assert.Contains(comba, p => p.Name == "model.layers.2.self_attn.o_proj.lora_B.weight");
    }

    [Fact]
    public void Merging_gives_the_logits_of_the_unmerged_adapters_and_folds_B_A_into_the_weights()
    {
        using var student = Student();
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var ids = Ids(student);
        var lora = LoraAdapters.Attach(student, AllProjections, seed: 2);
        Randomise(lora, 7);
        var original = student.named_parameters().ToDictionary(p => p.name, p => p.parameter.clone());
        var adapted = student.forward(ids);

        lora.Merge();
        var merged = student.forward(ids);
        var difference = (adapted - merged).abs().max().item<float>();
        Assert.True(difference < 1e-4, $"merged logits differ from the adapter's by {difference}");
        Assert.True((adapted - student.forward(ids)).abs().max().item<float>() < 1e-4, "the hooks must be gone after merging (no double update)");

        // W' = W + (alpha / rank) B A, computed independently in float64
        var parameters = lora.Parameters.ToDictionary(p => p.Name, p => p.Parameter);
        var weights = student.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var target in lora.TargetWeights)
        {
            var module = target[..^".weight".Length];
            var expected = original[target].to(ScalarType.Float64)
                + 2.0 * parameters[module + ".lora_B.weight"].to(ScalarType.Float64).matmul(parameters[module + ".lora_A.weight"].to(ScalarType.Float64));
            Assert.True(weights[target].to(ScalarType.Float64).allclose(expected, rtol: 0, atol: 1e-6), $"{target} is not W + (α/r) B A");
        }
        // a parameter without an adapter is untouched
        Assert.True(weights["model.layers.0.self_attn.A_log"].equal(original["model.layers.0.self_attn.A_log"]).all().item<bool>());
        Assert.Throws<InvalidOperationException>(lora.Merge);
    }

    [Fact]
    public void Dropout_applies_only_in_training_mode()
    {
        using var student = Student();
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var ids = Ids(student);
        using var lora = LoraAdapters.Attach(student, AllProjections with { Dropout = 0.5 }, seed: 2);
        Randomise(lora, 8);
        student.eval();
        var first = student.forward(ids);
        Assert.True(first.equal(student.forward(ids)).all().item<bool>(), "evaluation must be deterministic");
        student.train();
        Assert.False(first.equal(student.forward(ids)).all().item<bool>(), "training mode drops adapter inputs");
    }

    static string Recipe(string lora, string trainable = "") => $"""
        seed: 5
        teacher:
          llama2c: {Shared.Stories260KBin}
          tokenizer: {Shared.Tok512Bin}
        student:
          convert: {"{"} chunk_size: 16, initial_d: 0.02 {"}"}
        data:
          train: {"{"} path: {Shared.TinyStoriesTrain}, max_tokens: 3000 {"}"}
          validation: {"{"} path: {Shared.TinyStoriesValid}, max_tokens: 300 {"}"}
          add_eos: false
          eval_tokens: 128
        stages:
          - name: kd
            objective: distillation
        {trainable}    lora: {lora}
            optimizer: {"{"} lr: 1e-2 {"}"}
            schedule: {"{"} kind: constant, warmup_steps: 1 {"}"}
            steps: 12
            sequence_length: 32
            micro_batch: 4
            log_every: 1
            eval_every: 100
            checkpoint_every: 4
        """;

    string Write(string text)
    {
        var path = dir["recipe.yaml"];
        File.WriteAllText(path, text);
        return path;
    }

    [Theory]
    [InlineData("{ rank: 0 }", "'stages[0].lora.rank' is 0; expected a positive number")]
    [InlineData("{ rank: -4 }", "'stages[0].lora.rank' is -4")]
    [InlineData("{ alpha: 0 }", "'stages[0].lora.alpha' is 0")]
    [InlineData("{ dropout: 1 }", "'stages[0].lora.dropout' is 1")]
    [InlineData("{ targets: [q_proj, qkv_proj] }", "'stages[0].lora.targets' holds 'qkv_proj'")]
    [InlineData("{ targets: [] }", "'stages[0].lora.targets' is an empty list")]
    [InlineData("{ rnak: 8 }", "'stages[0].lora.rnak' is not a known field")]
    [InlineData("8", "'stages[0].lora' must be a mapping")]
    public void Bad_lora_fields_are_named(string lora, string expected)
    {
        var e = Assert.Throws<InvalidInputException>(() => RecipeLoader.Load(Write(Recipe(lora))));
        Assert.Contains(expected, e.Message);
        Assert.Contains("recipe.yaml", e.Message);
    }

    [Fact]
    public void Lora_recipes_read_their_defaults_and_check_the_stage()
    {
        var stage = RecipeLoader.Load(Write(Recipe("{ rank: 4, alpha: 4, dropout: 0.1, targets: [q_proj, down_proj] }"))).Stages[0];
        Assert.Equal((4, 4.0, 0.1, 1.0), (stage.Lora!.Rank, stage.Lora.Alpha, stage.Lora.Dropout, stage.Lora.Scale));
        Assert.Equal(["q_proj", "down_proj"], stage.Lora.Targets);
        Assert.Equal("none", stage.Trainable.Preset);                     // a LoRA stage trains only its adapters unless told

        var defaults = RecipeLoader.Load(Write(Recipe("{}", "    trainable: comba\n"))).Stages[0];
        Assert.Equal((8, 16.0, 0.0), (defaults.Lora!.Rank, defaults.Lora.Alpha, defaults.Lora.Dropout));
        Assert.Equal(LoraRecipe.AttentionProjections, defaults.Lora.Targets);
        Assert.Equal("comba", defaults.Trainable.Preset);

        var alignment = Recipe("{ targets: [q_proj, up_proj] }").Replace("objective: distillation", "objective: attention_alignment");
        Assert.Contains("names up_proj, but attention_alignment", Assert.Throws<InvalidInputException>(() => RecipeLoader.Load(Write(alignment))).Message);
        var none = Recipe("{}").Replace("    lora: {}\n", "    trainable: none\n");
        Assert.Contains("'stages[0].trainable' is 'none'", Assert.Throws<InvalidInputException>(() => RecipeLoader.Load(Write(none))).Message);
    }

    /// <summary>
    /// A 12-step KL stage with adapters only: the loss falls, the result folder holds plain merged weights (no lora
    /// tensors) that reproduce the stage's last evaluation, and a run killed after a checkpoint resumes exactly.
    /// </summary>
    [Fact]
    public void A_short_lora_stage_trains_merges_and_resumes_exactly()
    {
        set_num_threads(1);
        var recipe = RecipeLoader.Load(Write(Recipe("{ rank: 4, alpha: 8, dropout: 0.1, targets: [q_proj, k_proj, v_proj, o_proj, up_proj] }")));
        var run = dir["run"];
        var summary = DistillationRun.Run(recipe, run, new DistillOptions { TensorBoard = false }, cancellationToken: TestContext.Current.CancellationToken);
        var stage = summary.Stages[0];
        Assert.True(stage.Last!.Kl < 0.8 * stage.First!.Kl, $"held-out KL {stage.First.Kl} → {stage.Last.Kl}: the adapters did not learn");
        var train = StageMetrics.Read(Path.Combine(run, "01-kd", StageMetrics.FileName)).Train;
        Assert.True(train.TakeLast(3).Average(m => m.Loss) < 0.8 * train.Take(3).Average(m => m.Loss));

        // the result is a normal student: no adapter tensors, the projections changed, everything else as converted
        using (var result = Checkpoint.Open(Path.Combine(run, "student")))
        using (var initial = Checkpoint.Open(Path.Combine(run, "student-init")))
        {
            Assert.Equal(initial.Names.Order(), result.Names.Order());
            foreach (var name in initial.Names)
            {
                using var a = initial.Read(name);
                using var b = result.Read(name);
                var adapted = name.EndsWith("q_proj.weight") || name.EndsWith("k_proj.weight") || name.EndsWith("v_proj.weight")
                    || name.EndsWith("o_proj.weight") || name.EndsWith("up_proj.weight");
                Assert.True(adapted != a.equal(b).all().item<bool>(), adapted ? $"{name} carries an adapter but did not change" : $"{name} has no adapter but changed");
            }
        }
        var checkpoint = StageCheckpoints.List(Path.Combine(run, "01-kd", "checkpoints"))[^1].Path;
        Assert.Contains("model.layers.0.self_attn.q_proj.lora_A.weight", StageCheckpoints.ReadState(checkpoint).Parameters);

        // killed at step 10 (after the checkpoint at 8), then resumed: the same losses and the same final weights
        var resumed = dir["resumed"];
        Assert.Throws<Crash>(() => DistillationRun.Run(recipe, resumed, new DistillOptions { TensorBoard = false }, new CrashAt(10), TestContext.Current.CancellationToken));
        DistillationRun.Run(recipe, resumed, new DistillOptions { TensorBoard = false, Resume = true }, cancellationToken: TestContext.Current.CancellationToken);
        var again = StageMetrics.Read(Path.Combine(resumed, "01-kd", StageMetrics.FileName)).Train;
        Assert.Equal(train.Select(m => m.Step), again.Select(m => m.Step));
        foreach (var (e, a) in train.Zip(again))
            Assert.True(Math.Abs(e.Loss - a.Loss) <= 1e-6, $"step {e.Step}: loss {a.Loss} after resuming, {e.Loss} uninterrupted");
        using var first = Checkpoint.Open(Path.Combine(run, "student"));
        using var second = Checkpoint.Open(Path.Combine(resumed, "student"));
        foreach (var name in first.Names)
        {
            using var a = first.Read(name);
            using var b = second.Read(name);
            Assert.True(a.allclose(b, rtol: 0, atol: 1e-6), $"final {name} differs after resuming");
        }
    }

    sealed class Crash : Exception;

    sealed class CrashAt(long step) : IProgress<DistillationProgress>
    {
        public void Report(DistillationProgress p)
        {
            if (p.Note is null && p.Step == step) throw new Crash();
        }
    }
}
