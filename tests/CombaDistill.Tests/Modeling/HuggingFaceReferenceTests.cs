using CombaDistill.Conversion;
using CombaDistill.IO;
using CombaDistill.Modeling;
using CombaDistill.Modeling.Llama;
using CombaDistill.Tests.Support;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Modeling;

/// <summary>
/// Checkpoints written by Hugging Face transformers' own save_pretrained, and the logits transformers
/// computed for them (Data/hf/README.md says how they were made): we load the same files and compute the same numbers.
/// </summary>
public class HuggingFaceReferenceTests
{
    static string Data(string name) => Path.Combine(AppContext.BaseDirectory, "Data", "hf", name);

    static Tensor Reference(string file, string name)
    {
        using var f = SafeTensorsFile.Open(Data(file));
        return f.Read(name);
    }

    [Fact]
    public void Sharded_bf16_GQA_llama3_checkpoint_gives_transformers_logits()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var ids = Reference("llama3_gqa_bf16_logits.safetensors", "input_ids");
        using (var f32 = LlamaForCausalLM.FromPretrained(Data("llama3_gqa_bf16"), ScalarType.Float32))
        {
            Assert.Equal("llama3", f32.Config.RopeScaling?.Type);
            Assert.Equal(2, f32.Config.NumKeyValueHeads);
            // Measured: 3.1e-5 of the logit scale, 0 at position 0 and growing with position (float32 rounding of
            // the rotary angles, theta 500000, done in a different order); the Qwen2 and stories260K cases agree to 1e-5.
            LlamaForCausalLMTests.AssertClose(f32.forward(ids), Reference("llama3_gqa_bf16_logits.safetensors", "logits_f32"), 1e-4);
        }
        // bf16 end to end: both sides round every op to 8 mantissa bits, in different orders, so they differ by a
        // few bf16 ulps of the largest logits (2^-8 ≈ 0.4% each); 3% of the logit scale would still catch a wrong op.
        using var bf16 = LlamaForCausalLM.FromPretrained(Data("llama3_gqa_bf16"));
        Assert.Equal(ScalarType.BFloat16, bf16.parameters().First().dtype);
        LlamaForCausalLMTests.AssertClose(bf16.forward(ids), Reference("llama3_gqa_bf16_logits.safetensors", "logits_bf16"), 0.03);
    }

    [Fact]
    public void Qwen2_with_biases_and_tied_embeddings_gives_transformers_logits()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        using var model = LlamaForCausalLM.FromPretrained(Data("qwen2_tied"));
        Assert.True(model.Config.TieWordEmbeddings && model.Config.QkvBias);
        var ids = Reference("qwen2_tied_logits.safetensors", "input_ids");
        LlamaForCausalLMTests.AssertClose(model.forward(ids), Reference("qwen2_tied_logits.safetensors", "logits_f32"), 1e-5);
    }

    [Fact]
    public void Imported_stories260K_gives_the_logits_and_greedy_tokens_transformers_computes_on_the_same_folder()
    {
        using var temp = new TempDir();
        Llama2cImporter.Import(Shared.Stories260KBin, Shared.Tok512Bin, temp["m"], force: false, cancellationToken: TestContext.Current.CancellationToken);
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        using var model = LlamaForCausalLM.FromPretrained(temp["m"]);
        const string file = "stories260K_logits.safetensors";
        LlamaForCausalLMTests.AssertClose(model.forward(tensor(new long[] { 1 }, [1, 1]))[0], Reference(file, "logits_after_bos"), 1e-5);
        LlamaForCausalLMTests.AssertClose(model.forward(Reference(file, "input_ids")), Reference(file, "logits"), 1e-5);
        var greedy = Generation.Generate(model, [1], new GenerationOptions(200, 0, StopAtEos: false), TestContext.Current.CancellationToken);
        Assert.Equal(Reference(file, "greedy_ids").data<long>().Select(i => (int)i), greedy);
    }

    /// <summary>
    /// A Mistral whose sliding window (4) is shorter than the input (12): transformers' logits with the window, and
    /// without it for contrast; the pytorch_model.bin save_pretrained wrote for it holds the same tensors.
    /// </summary>
    [Fact]
    public void Mistral_sliding_window_gives_transformers_logits()
    {
        Assert.SkipUnless(File.Exists(Data("mistral_sliding_logits.safetensors")),
            "the Mistral fixture from tools/hf_mistral_reference.py (GPU host) has not been added to Data/hf yet");
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        using var model = LlamaForCausalLM.FromPretrained(Data("mistral_sliding"));
        Assert.Equal(4, model.Config.SlidingWindow);
        var ids = Reference("mistral_sliding_logits.safetensors", "input_ids");
        var logits = model.forward(ids);
        LlamaForCausalLMTests.AssertClose(logits, Reference("mistral_sliding_logits.safetensors", "logits_f32"), 1e-5);
        // Without the window the logits past position 4 would be transformers' full-attention ones.
        var full = Reference("mistral_sliding_logits.safetensors", "logits_full_f32");
        Assert.True((logits[.., 4..] - full[.., 4..]).abs().max().item<float>() > 1e-3);

        using var bin = Checkpoint.Open(Path.Combine(Data("mistral_sliding"), Checkpoint.PyTorchFileName));
        using var safetensors = Checkpoint.Open(Path.Combine(Data("mistral_sliding"), Checkpoint.SingleFileName));
        Assert.Equal(safetensors.Names.Order(), bin.Names.Order());
        foreach (var name in bin.Names)
        {
            using var a = bin.Read(name);
            using var b = safetensors.Read(name);
            Assert.Equal(b.bytes.ToArray(), a.bytes.ToArray());
        }
    }
}
