using CombaDistill.Ops;
using CsCheck;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Ops;

/// <summary>Prefill T tokens with Chunkwise, continue N tokens with Recurrent steps: same as Chunkwise over T + N.</summary>
public class CombaPrefillTests
{
    static readonly Gen<(CombaCase Case, int Prefill)> Cases =
        from batch in Gen.Int[1, 2]
        from kvHeads in Gen.Int[1, 2]
        from groups in Gen.OneOfConst(1, 2, 4)
        from prefill in Gen.Int[1, 200]
        from steps in Gen.Int[1, 12]
        from keyDim in Gen.Int[1, 16]
        from valueDim in Gen.Int[1, 16]
        from chunk in Gen.OneOfConst(16, 32, 64, 128)
        from withState in Gen.Bool
        from seed in Gen.Int[0, 1_000_000]
        select (new CombaCase(batch, kvHeads, groups, prefill + steps, keyDim, valueDim, chunk, withState, seed), prefill);

    static void Check(CombaCase c, int prefill, ScalarType dtype, double tolerance)
    {
        using var scope = NewDisposeScope();
        using var x = CombaInputs.Random(c, dtype);
        var (whole, wholeState) = ChunkwiseComba.Forward(x.Q, x.K, x.V, x.G, x.Beta, x.Lambda, x.D, x.Scale, x.State, c.ChunkSize);

        Tensor Head(Tensor t) => t.narrow(2, 0, prefill);
        var (first, state) = ChunkwiseComba.Forward(Head(x.Q), Head(x.K), Head(x.V), Head(x.G), Head(x.Beta), x.Lambda, x.D, x.Scale, x.State, c.ChunkSize);
        var outputs = new List<Tensor> { first };
        for (int t = prefill; t < c.Length; t++)
        {
            var (o, next) = RecurrentComba.Step(x.Q.select(2, t), x.K.select(2, t), x.V.select(2, t), x.G.select(2, t), x.Beta.select(2, t), x.Lambda, x.D, x.Scale, state);
            outputs.Add(o.unsqueeze(2));
            state = next;
        }
        Compare.Close(cat(outputs, dim: 2), whole, tolerance, $"outputs [{c}, prefill {prefill}]");
        Compare.Close(state, wholeState, tolerance, $"final state [{c}, prefill {prefill}]");
    }

    [Fact]
    public void Chunkwise_prefill_then_steps_equals_Chunkwise_over_everything_in_float64() =>
        Cases.Sample(p => Check(p.Case, p.Prefill, ScalarType.Float64, 1e-10), iter: 30, threads: 1, seed: Environment.GetEnvironmentVariable("CsCheck_Seed"));

    [Fact]
    public void Chunkwise_prefill_then_steps_equals_Chunkwise_over_everything_in_float32() =>
        Cases.Sample(p => Check(p.Case, p.Prefill, ScalarType.Float32, 1e-5), iter: 20, threads: 1, seed: Environment.GetEnvironmentVariable("CsCheck_Seed"));
}
