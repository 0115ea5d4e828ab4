using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CombaDistill.Modeling.Comba;

/// <summary>
/// The token embedding table, made directly on its device in its dtype. TorchSharp's nn.Embedding (and
/// Embedding_from_pretrained) first build a float32 table on the CPU and then move it, which on the meta device still
/// allocates the whole table until the garbage collector runs (1 GB for a 128k × 2048 vocabulary) — too much for
/// planning a conversion "without allocating weights". The lookup is nn.Embedding's: rows of weight, bit for bit.
/// </summary>
public sealed class TokenEmbedding : nn.Module<Tensor, Tensor>
{
    public Parameter weight;

    public TokenEmbedding(long vocabulary, long hidden, ScalarType dtype = ScalarType.Float32, Device? device = null) : base(nameof(TokenEmbedding))
    {
        var table = empty([vocabulary, hidden], dtype, device);
        if (!table.is_meta) using (no_grad()) table.normal_();     // nn.Embedding's N(0, 1); loading replaces it
        weight = new Parameter(table);
        RegisterComponents();
    }

    public override Tensor forward(Tensor ids) => weight.index_select(0, ids.reshape(-1)).view([.. ids.shape, weight.shape[1]]);
}
