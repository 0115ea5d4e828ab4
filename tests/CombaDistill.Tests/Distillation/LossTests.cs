using CombaDistill.Distillation;
using CombaDistill.Modeling.Comba;
using CombaDistill.Modeling.Llama;
using CombaDistill.Tests.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Distillation;

public sealed class LossTests
{
    /// <summary>KL(p‖q) = Σ p log(p/q) by hand, in double, for one row of logits at temperature t.</summary>
    static double KlByHand(double[] teacher, double[] student, double t)
    {
        double[] Softmax(double[] z)
        {
            var max = z.Max();
            var e = z.Select(v => Math.Exp((v - max) / t)).ToArray();
            var sum = e.Sum();
            return e.Select(v => v / sum).ToArray();
        }
        var (p, q) = (Softmax(teacher), Softmax(student));
        return p.Zip(q).Sum(pq => pq.First * Math.Log(pq.First / pq.Second));
    }

    [Fact]
    public void KL_divergence_is_teacher_to_student_per_token_mean()
    {
        double[][] teacher = [[1.0, 2.0, -0.5], [0.3, 0.3, 4.0]];
        double[][] student = [[0.5, 2.5, 0.0], [-1.0, 0.7, 3.0]];
        using var zt = tensor(teacher.SelectMany(r => r).Select(v => (float)v).ToArray(), [1, 2, 3]);
        using var zs = tensor(student.SelectMany(r => r).Select(v => (float)v).ToArray(), [1, 2, 3]);
        foreach (var t in new[] { 1.0, 2.0 })
        {
            var expected = (KlByHand(teacher[0], student[0], t) + KlByHand(teacher[1], student[1], t)) / 2;
            using var kl = LogitLoss.KlDivergence(zt, zs, t);
            Assert.Equal(expected, kl.item<float>(), 6);
        }
        // the first argument is the teacher: swapping gives KL(student ‖ teacher), a different number here
        using var reversed = LogitLoss.KlDivergence(zs, zt, 1.0);
        using var forward = LogitLoss.KlDivergence(zt, zs, 1.0);
        Assert.True(Math.Abs(reversed.item<float>() - forward.item<float>()) > 1e-3);
        Assert.Equal((KlByHand(student[0], teacher[0], 1) + KlByHand(student[1], teacher[1], 1)) / 2, reversed.item<float>(), 6);
    }

    [Theory]
    [InlineData(1.0, 1.0, 0.0, 8)]
    [InlineData(2.0, 1.0, 0.5, 5)]
    [InlineData(1.5, 0.0, 1.0, 64)]
    public void ChunkedLossEqualsTheUnchunkedReferenceInValueAndGradient(double temperature, double klWeight, double ceWeight, int chunk)
    {
        const int batch = 2, length = 37, hidden = 6, vocab = 11;
        var g = new Generator(5);
        // A small "body" (input → hidden through w) and a head, so gradients must flow through both paths.
        var input = randn([batch, length, hidden], generator: g);
        var teacherHidden = randn([batch, length, hidden], generator: g);
        var teacherHeadWeight = randn([vocab, hidden], generator: g);
        var targets = randint(0, vocab, [batch, length], generator: g);
        var body = (randn([hidden, hidden], generator: g) / 2).requires_grad_(true);
        var head = randn([vocab, hidden], generator: g).requires_grad_(true);

        // reference: every logit at once, in float64
        var referenceLoss = ReferenceLoss(input.to_type(ScalarType.Float64).matmul(body.to_type(ScalarType.Float64)), head.to_type(ScalarType.Float64),
            teacherHidden.to_type(ScalarType.Float64), teacherHeadWeight.to_type(ScalarType.Float64), targets, temperature, klWeight, ceWeight);
        referenceLoss.backward();
        var (referenceBodyGrad, referenceHeadGrad) = (body.grad!.to_type(ScalarType.Float64), head.grad!.to_type(ScalarType.Float64));
        body.grad!.zero_();
        head.grad!.zero_();

        var options = new LogitLossOptions(temperature, klWeight, ceWeight, chunk);
        var headGradients = 0;
        var value = LogitLoss.Backward(input.matmul(body), head, teacherHidden, teacherHeadWeight, targets, options, afterHeadGradient: () => headGradients++);
        Assert.Equal(referenceLoss.item<double>(), value.Loss, 5);
        Assert.Equal(batch * length, value.Tokens);
        Assert.True(allclose(body.grad!.to_type(ScalarType.Float64), referenceBodyGrad, rtol: 1e-4, atol: 1e-6), "body gradient differs");
        Assert.True(allclose(head.grad!.to_type(ScalarType.Float64), referenceHeadGrad, rtol: 1e-4, atol: 1e-6), "head gradient differs");
        Assert.Equal(1, headGradients);   // one head-gradient product per call, however many chunks

        // lossScale scales the gradient only (as 1 / accumulation does), and gradients accumulate across calls
        body.grad!.zero_();
        LogitLoss.Backward(input.matmul(body), head, teacherHidden, teacherHeadWeight, targets, options, lossScale: 0.25);
        Assert.True(allclose(body.grad!.to_type(ScalarType.Float64), referenceBodyGrad * 0.25, rtol: 1e-4, atol: 1e-6), "scaled body gradient differs");
        Assert.True(allclose(head.grad!.to_type(ScalarType.Float64), referenceHeadGrad * 1.25, rtol: 1e-4, atol: 1e-6), "accumulated head gradient differs");
        using (no_grad())
        {
            var evaluated = LogitLoss.Evaluate(input.matmul(body), head, teacherHidden, teacherHeadWeight, targets, options);
            Assert.Equal(value.Loss, evaluated.Loss, 5);
            Assert.True(evaluated.CrossEntropy > 0);
        }
    }

    [Fact]
    public void By_hand_a_tied_head_gets_both_its_gradients_when_the_caller_moves_the_heads_part_away()
    {
        // the student's body starts with a lookup in the same matrix its head multiplies by (tied embeddings), and the
        // caller moves the head's gradient away and clears it as mixed precision does (into a float32 master)
        const int batch = 2, length = 9, hidden = 5, vocab = 13;
        var g = new Generator(23);
        var ids = randint(0, vocab, [batch, length], generator: g);
        var targets = randint(0, vocab, [batch, length], generator: g);
        var teacherHidden = randn([batch, length, hidden], generator: g);
        var teacherHeadWeight = randn([vocab, hidden], generator: g);
        var body = (randn([hidden, hidden], generator: g) / 2).requires_grad_(true);
        var tied = randn([vocab, hidden], generator: g).requires_grad_(true);
        var options = new LogitLossOptions(1.0, 1.0, 0.5, 4);

        var reference = ReferenceLoss(tied.to_type(ScalarType.Float64).index_select(0, ids.reshape(-1)).reshape(batch, length, hidden).matmul(body.to_type(ScalarType.Float64)),
            tied.to_type(ScalarType.Float64), teacherHidden.to_type(ScalarType.Float64), teacherHeadWeight.to_type(ScalarType.Float64), targets, 1.0, 1.0, 0.5);
        reference.backward();
        var (referenceTied, referenceBody) = (tied.grad!.to_type(ScalarType.Float64), body.grad!.to_type(ScalarType.Float64));
        tied.grad = null;
        body.grad = null;

        var master = zeros([vocab, hidden], ScalarType.Float64);
        var moves = 0;
        var studentHidden = tied.index_select(0, ids.reshape(-1)).reshape(batch, length, hidden).matmul(body);
        LogitLoss.Backward(studentHidden, tied, teacherHidden, teacherHeadWeight, targets, options,
            afterHeadGradient: () =>
            {
                moves++;
                master.add_(tied.grad!.to_type(ScalarType.Float64));
                tied.grad = null;
            });
        Assert.Equal(1, moves);
        var total = master + tied.grad!.to_type(ScalarType.Float64);   // the head's part, then the lookup's from the body's backward
        Assert.True(allclose(total, referenceTied, rtol: 1e-4, atol: 1e-6), "tied weight gradient differs");
        Assert.True(allclose(body.grad!.to_type(ScalarType.Float64), referenceBody, rtol: 1e-4, atol: 1e-6), "body gradient differs");
    }

    static Tensor ReferenceLoss(Tensor studentHidden, Tensor head, Tensor teacherHidden, Tensor teacherHead, Tensor targets, double t, double klWeight, double ceWeight)
    {
        var zs = studentHidden.matmul(head.t());
        var zt = teacherHidden.matmul(teacherHead.t());
        var p = (zt / t).softmax(-1);
        var kl = (p * ((zt / t).log_softmax(-1) - (zs / t).log_softmax(-1))).sum(-1).mean();
        var logProbabilities = zs.log_softmax(-1);
        var ce = -logProbabilities.gather(-1, targets.unsqueeze(-1)).mean();
        return kl * (klWeight * t * t) + ce * ceWeight;
    }

    // ---- attention alignment ----

    static (LlamaForCausalLM Teacher, CombaForCausalLM Student) Pair(int[] keptAttention, ulong seed = 3)
    {
        var c = TinyModels.Llama3Gqa;
        var weights = TinyModels.RandomWeights(c, seed);
        var teacher = TinyModels.Build(c, weights);
        torch.manual_seed(1);
        var student = new CombaForCausalLM(new CombaStudentConfig { Architecture = c, Comba = new CombaConfig { ChunkSize = 16 }, AttentionLayers = keptAttention });
        var result = student.load_state_dict(weights, strict: false);
        Assert.Empty(result.unexpected_keyes);   // (sic, TorchSharp)
        return (teacher, student);
    }

    static Tensor Ids(int batch, int length, int seed) =>
        tensor(Enumerable.Range(0, batch).SelectMany(b => TinyModels.RandomIds(TinyModels.Llama3Gqa, length, seed + b)).ToArray(), [batch, length]);

    [Fact]
    public void Alignment_loss_is_zero_when_the_students_attention_is_the_teachers()
    {
        var (teacher, student) = Pair(keptAttention: [0, 1]);
        using var ids = Ids(2, 20, 9);
        var (loss, perLayer) = AttentionAlignment.Compute(teacher, student, ids, [0, 1]);
        Assert.Equal(0.0, loss.item<float>());
        Assert.Equal([0.0, 0.0], perLayer);
        Assert.Empty(AttentionAlignment.ConvertedLayers(student));
    }

    [Fact]
    public void Alignment_compares_each_layer_on_the_teachers_hidden_states()
    {
        var (teacher, student) = Pair(keptAttention: []);
        using var ids = Ids(2, 20, 4);
        Assert.Equal([0, 1], AttentionAlignment.ConvertedLayers(student));
        var (loss, perLayer) = AttentionAlignment.Compute(teacher, student, ids, [0, 1]);
        Assert.True(perLayer.All(v => v > 1e-4), "an untrained Comba layer differs from attention");
        Assert.Equal(perLayer.Average(), loss.item<float>(), 5);

        // independently: the teacher's layer inputs from its own forward, y = attention(norm h), mean squared difference
        using (no_grad())
        {
            var inputs = new List<Tensor>();
            teacher.model.forward(ids, layerInputs: inputs);
            var (cos, sin) = teacher.model.Rotary.CosSin(0, 20, ScalarType.Float32, CPU);
            for (var l = 0; l < 2; l++)
            {
                var tl = teacher.model.layers[l];
                var sl = student.model.layers[l];
                var yT = tl.self_attn.forward(tl.input_layernorm.forward(inputs[l]), cos, sin);
                var yS = ((CombaAttention)sl.self_attn).forward(sl.input_layernorm.forward(inputs[l]), cos, sin).Output;
                Assert.Equal((yS - yT).square().sum().item<float>() / (2 * 20 * TinyModels.Llama3Gqa.HiddenSize), perLayer[l], 5);
            }
        }

        // gradients reach the student's mixers (and their input norms) and nothing else
        loss.backward();
        foreach (var (name, p) in student.named_parameters())
        {
            var touched = p.grad is not null && p.grad.abs().sum().item<float>() > 0;
            var attentionSide = name.Contains(".self_attn.") || name.Contains(".input_layernorm.");
            if (!attentionSide) Assert.False(touched, $"{name} got a gradient");
        }
        Assert.True(student.named_parameters().Where(p => p.name.Contains("self_attn.q_proj")).All(p => p.parameter.grad is not null));
    }

    [Fact]
    public void A_layers_loss_does_not_depend_on_the_students_other_layers()
    {
        var (teacher, student) = Pair(keptAttention: []);
        using var ids = Ids(1, 24, 2);
        double[] before;
        using (no_grad()) before = AttentionAlignment.Compute(teacher, student, ids, [0, 1]).PerLayer;
        using (no_grad())
        {
            // scramble layer 0's mixer and every MLP of the student: layer 1 still sees the teacher's stream
            foreach (var (name, p) in student.named_parameters())
                if (name.StartsWith("model.layers.0.self_attn.") || name.Contains(".mlp.")) p.add_(randn_like(p));
        }
        double[] after;
        using (no_grad()) after = AttentionAlignment.Compute(teacher, student, ids, [0, 1]).PerLayer;
        Assert.NotEqual(before[0], after[0]);
        Assert.Equal(before[1], after[1]);
    }
    [Fact]
    public void A_frozen_input_norm_equal_to_the_teachers_is_shared_and_changes_no_bit_of_loss_or_gradient()
    {
        var (teacher, student) = Pair(keptAttention: []);
        using var ids = Ids(2, 20, 6);
        foreach (var (name, p) in student.named_parameters()) p.requires_grad = name.Contains(".self_attn.");

        // converted from the teacher, frozen: both layers share; a norm that trains, or holds other values, does not
        Assert.Equal([0, 1], AttentionAlignment.SharedInputNorms(teacher, student, [0, 1]).Order());
        student.model.layers[0].input_layernorm.weight.requires_grad = true;
        Assert.Equal([1], AttentionAlignment.SharedInputNorms(teacher, student, [0, 1]).Order());
        student.model.layers[0].input_layernorm.weight.requires_grad = false;
        using (no_grad()) student.model.layers[1].input_layernorm.weight[3] += 1e-3f;
        Assert.Equal([0], AttentionAlignment.SharedInputNorms(teacher, student, [0, 1]).Order());
        using (no_grad()) student.model.layers[1].input_layernorm.weight[3] -= 1e-3f;
        var shared = AttentionAlignment.SharedInputNorms(teacher, student, [0, 1]);
        Assert.Equal(2, shared.Count);

        (float Loss, double[] PerLayer, Dictionary<string, Tensor> Grads) Run(IReadOnlySet<int>? norms, bool checkpointed)
        {
            foreach (var p in student.parameters()) p.grad = null;
            var (loss, perLayer) = AttentionAlignment.Compute(teacher, student, ids, [0, 1], checkpointed: checkpointed, sharedNorms: norms);
            loss.backward();
            return (loss.item<float>(), perLayer, student.named_parameters().Where(p => p.parameter.grad is not null)
                .ToDictionary(p => p.name, p => p.parameter.grad!.clone()));
        }
        foreach (var checkpointed in new[] { false, true })
        {
            var own = Run(null, checkpointed);
            var teachers = Run(shared, checkpointed);
            Assert.Equal(own.Loss, teachers.Loss);
            Assert.Equal(own.PerLayer, teachers.PerLayer);
            Assert.Equal(own.Grads.Keys.Order(), teachers.Grads.Keys.Order());
            Assert.NotEmpty(own.Grads);
            foreach (var (name, g) in own.Grads)
                Assert.True(g.equal(teachers.Grads[name]).all().item<bool>(), $"{name} (checkpointed: {checkpointed}): the gradient differs");
        }
    }
    [Fact]
    public void Backpropagating_layer_by_layer_gives_the_gradients_of_one_backward_through_the_loss()
    {
        var (teacher, student) = Pair(keptAttention: []);
        using var ids = Ids(2, 20, 8);
        foreach (var (name, p) in student.named_parameters()) p.requires_grad = name.Contains(".self_attn.");
        const double scale = 0.375;   // a micro-batch's share, as the trainer passes it
        Dictionary<string, Tensor> Gradients() => student.named_parameters().Where(p => p.parameter.grad is not null)
            .ToDictionary(p => p.name, p => p.parameter.grad!.clone());
        foreach (var checkpointed in new[] { false, true })
        {
            foreach (var p in student.parameters()) p.grad = null;
            var whole = AttentionAlignment.Compute(teacher, student, ids, [0, 1], alignedLayerCount: 3, checkpointed: checkpointed);
            (whole.Loss * scale).backward();
            var expected = Gradients();

            foreach (var p in student.parameters()) p.grad = null;
            // when layer 1's mixer starts, layer 0's has already been backpropagated (its activations are gone)
            var layer0 = ((CombaAttention)student.model.layers[0].self_attn).q_proj;
            var seenBeforeLayer1 = new List<bool>();
            var hook = ((CombaAttention)student.model.layers[1].self_attn).q_proj.register_forward_hook((m, x, y) =>
            {
                seenBeforeLayer1.Add(layer0.weight!.grad is { IsInvalid: false });
                return y;
            });
            var layered = AttentionAlignment.Compute(teacher, student, ids, [0, 1], alignedLayerCount: 3, checkpointed: checkpointed, backwardScale: scale);
            hook.remove();
            var actual = Gradients();
            Assert.True(seenBeforeLayer1.Count > 0 && seenBeforeLayer1[0], "layer 0's gradient was not there when layer 1's mixer ran");

            Assert.False(layered.Loss.requires_grad, "the loss comes back detached");
            Assert.Equal(whole.Loss.item<float>(), layered.Loss.item<float>());
            Assert.Equal(whole.PerLayer, layered.PerLayer);
            Assert.Equal(expected.Keys.Order(), actual.Keys.Order());
            Assert.Contains(expected.Keys, k => k.StartsWith("model.layers.0.") && k.Contains("q_proj"));
            Assert.Contains(expected.Keys, k => k.StartsWith("model.layers.1.") && k.Contains("q_proj"));
            // float32 arithmetic in a different order (the factor scale/3 formed in double first): equal to rounding
            foreach (var (name, g) in expected)
                Assert.True(allclose(actual[name], g, rtol: 1e-5, atol: 1e-9), $"{name} (checkpointed: {checkpointed}): {(actual[name] - g).abs().max().item<float>():E2} off");
        }
    }
}
