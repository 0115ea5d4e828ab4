using CombaDistill.Modeling;
using CombaDistill.Modeling.Comba;
using CombaDistill.Modeling.Llama;
using static TorchSharp.torch;

namespace CombaDistill.Distillation;

/// <summary>
/// Stage-1 objective (RADLADS, LoLCATs): every converted layer learns to reproduce its teacher layer's attention
/// output. The teacher runs once over its own layers; at each aligned layer its normed input x feeds both the
/// teacher's softmax attention (y_T) and the student's mixer (y_S), so each layer trains on the hidden states the
/// teacher would give it, independently of how well the layers below it are aligned — all layers train in one pass,
/// or, split into blocks of layers, in independent shard jobs (<see cref="LayerShard"/>).
/// <code>
///   loss = mean over aligned layers of  mean over tokens of ‖y_T − y_S‖² / d      (float32)
/// </code>
/// The mean is written as a sum divided by the number of aligned layers in the whole student, so a shard's loss is
/// its layers' share of the joint loss and each layer's gradient is the same bits in a shard as in the joint pass.
/// </summary>
/// <summary>
/// The alignment loss with its graph, and each computed layer's value still on the device: reading them waits for
/// the device, so a trainer reads them after it has queued the backward pass.
/// </summary>
public sealed class AlignmentLoss(Tensor loss, Tensor perLayerLosses)
{
    /// <summary>the mean over the aligned layers, with its graph into the student (detached when the layers were backpropagated one by one)</summary>
    public Tensor Loss { get; } = loss;

    /// <summary>each computed layer's loss, detached, on the device</summary>
    public Tensor PerLayerLosses { get; } = perLayerLosses;

    /// <summary>Each computed layer's loss (waits for the device).</summary>
    public double[] PerLayer => PerLayerLosses.to(ScalarType.Float64).cpu().data<double>().ToArray();

    public void Deconstruct(out Tensor loss, out double[] perLayer) => (loss, perLayer) = (Loss, PerLayer);
}

public static class AttentionAlignment
{
    /// <summary>The layers a converted student aligns: those whose self_attn is Comba (kept attention layers are the teacher's already).</summary>
    public static IReadOnlyList<int> ConvertedLayers(CombaForCausalLM student) =>
        Enumerable.Range(0, student.model.layers.Count).Where(i => !student.model.layers[i].IsAttention).ToArray();

    /// <summary>
    /// The mean loss (a scalar with a graph into the student's mixers at <paramref name="layers"/>) and each layer's
    /// value. The teacher runs without gradients; only the student's input norm and self_attn are evaluated.
    /// </summary>
    /// <param name="inputIds">(B, T)</param>
    /// <param name="layers">the layers to compute, ascending</param>
    /// <param name="alignedLayerCount">the divisor: all aligned layers of the student when <paramref name="layers"/> is a shard of them; default <paramref name="layers"/>.Count</param>
    /// <param name="sharedNorms">layers whose student input norm is known to equal the teacher's (<see cref="SharedInputNorms"/>):
    /// their mixers take the teacher's normed input instead of normalising the same hidden states again</param>
    /// <param name="backwardScale">when given, each layer's share of the loss, times this, is backpropagated as soon as
    /// it is formed, and the loss returned is detached. A layer's loss depends only on its own mixer (its input is the
    /// teacher's, without gradient), so the gradients are those of one backward through the whole loss, while only
    /// one layer's activations are alive at a time instead of every layer's.</param>
    public static AlignmentLoss Compute(LlamaForCausalLM teacher, CombaForCausalLM student, Tensor inputIds, IReadOnlyList<int> layers,
        int? alignedLayerCount = null, bool checkpointed = false, IReadOnlySet<int>? sharedNorms = null, double? backwardScale = null)
    {
        if (layers.Count == 0) throw new ArgumentException("no layer to align");
        using var scope = NewDisposeScope();
        var teacherModel = teacher.model;
        var wanted = layers.ToHashSet();
        var last = layers.Max();
        var studentType = student.model.embed_tokens.weight!.dtype;
        var studentDevice = student.model.embed_tokens.weight!.device;
        var placement = teacherModel.Placement;

        var losses = new List<Tensor>();
        var divisor = alignedLayerCount ?? layers.Count;
        Tensor h;
        Tensor cos, sin;
        using (no_grad())
        {
            h = teacherModel.embed_tokens.forward(inputIds);
            (cos, sin) = teacherModel.Rotary.CosSin(0, inputIds.shape[1], h.dtype, h.device);
        }
        var (studentCos, studentSin) = (cos.to(studentDevice).to(studentType), sin.to(studentDevice).to(studentType));
        // a checkpointed mixer runs again in the backward pass, after this scope has ended: its tables must outlive it
        if (checkpointed) (studentCos, studentSin) = (studentCos.MoveToOuterDisposeScope(), studentSin.MoveToOuterDisposeScope());
        for (var i = 0; i <= last; i++)
        {
            var teacherLayer = teacherModel.layers[i];
            Tensor teacherOutput, normed;
            using (no_grad())
            {
                // A teacher split by layer (LayerPlacement) runs each layer where it lives; the loss is on the student's device.
                var device = placement.LayerDevice(i);
                (h, cos, sin) = (h.to(device), cos.to(device), sin.to(device));
                normed = LayerScope.Run(() => teacherLayer.input_layernorm.forward(h));
                teacherOutput = LayerScope.Run(() => teacherLayer.self_attn.forward(normed, cos, sin));
                if (!wanted.Contains(i) || sharedNorms?.Contains(i) != true) normed.Dispose();   // not needed past the teacher's attention
            }
            if (wanted.Contains(i))
            {
                // each layer's temporaries go when its loss is formed (LayerScope); autograd keeps what backward needs
                var studentLayer = student.model.layers[i];
                var share = sharedNorms?.Contains(i) == true;
                losses.Add(LayerScope.Run(() =>
                {
                    var x = share ? normed.to(studentDevice) : studentLayer.input_layernorm.forward(h.to(studentDevice).to(studentType));
                    var studentOutput = checkpointed
                        ? Ops.ActivationCheckpoint.Run(y => StudentMixer(studentLayer, y, studentCos, studentSin), x)
                        : StudentMixer(studentLayer, x, studentCos, studentSin);
                    // mse_loss: the squared difference in one elementwise kernel and its mean, and one kernel back
                    // (2(s − t)/n), where sub, square and mean made three passes each way over (B, T, d) float32
                    var layerLoss = nn.functional.mse_loss(studentOutput.to(ScalarType.Float32), teacherOutput.to(studentDevice).to(ScalarType.Float32));
                    if (backwardScale is not { } factor) return layerLoss;
                    (layerLoss * (factor / divisor)).backward();
                    return layerLoss.detach();
                }));
            }
            if (!normed.IsInvalid) normed.Dispose();   // autograd holds its own reference where a mixer used it
            if (i == last) break;
            using (no_grad())
            {
                // The rest of the teacher's block (LlamaDecoderLayer.forward), so the next layer sees the teacher's stream.
                h = LayerScope.Run(() =>
                {
                    var mid = h + teacherOutput;
                    return mid + teacherLayer.mlp.forward(teacherLayer.post_attention_layernorm.forward(mid));
                });
            }
        }
        var perLayer = stack(losses);
        var loss = perLayer.sum() / divisor;
        return new AlignmentLoss(loss.MoveToOuterDisposeScope(), perLayer.detach().MoveToOuterDisposeScope());
    }

    /// <summary>
    /// The layers among <paramref name="layers"/> whose student input norm gives exactly the teacher's normed hidden
    /// states: the student's norm weight is frozen (no gradient in this stage) and holds the teacher's values, in the
    /// teacher's dtype and on its device, with the same ε. Computing such a norm again is the same arithmetic on the same
    /// numbers (at 4 × 2,048 tokens of a 2,048-wide model its tensor ops move about 0.6 GB a layer: an estimate, not timed).
    /// Compares the weights on the device and reads all the answers back at once: call it once per stage.
    /// </summary>
    public static IReadOnlySet<int> SharedInputNorms(LlamaForCausalLM teacher, CombaForCausalLM student, IReadOnlyList<int> layers)
    {
        using var scope = NewDisposeScope();
        // the student's own path normalises the teacher's hidden states cast to its dtype: the same only if they already are
        if (teacher.model.embed_tokens.weight!.dtype != student.model.embed_tokens.weight!.dtype) return new HashSet<int>();
        var candidates = new List<(int Layer, Tensor Same)>();
        foreach (var i in layers)
        {
            var (s, t) = (student.model.layers[i].input_layernorm, teacher.model.layers[i].input_layernorm);
            var (sw, tw) = ((Tensor)s.weight, (Tensor)t.weight);
            if (sw.requires_grad || s.Epsilon != t.Epsilon || sw.dtype != tw.dtype || !sw.shape.SequenceEqual(tw.shape)
                || sw.device_type != tw.device_type || sw.device_index != tw.device_index)
                continue;
            candidates.Add((i, ((sw == tw) & (sw.signbit() == tw.signbit())).all()));   // the same bits (−0 is not +0)
        }
        if (candidates.Count == 0) return new HashSet<int>();
        var same = stack(candidates.Select(c => c.Same).ToArray()).cpu().data<bool>().ToArray();
        return candidates.Where((c, k) => same[k]).Select(c => c.Layer).ToHashSet();
    }

    static Tensor StudentMixer(CombaDecoderLayer layer, Tensor x, Tensor cos, Tensor sin) => layer.self_attn switch
    {
        CombaAttention comba => comba.forward(x, cos, sin).Output,
        LlamaAttention attention => attention.forward(x, cos, sin),
        var other => throw new InvalidOperationException($"cannot align a {other.GetType().Name}"),
    };
}
