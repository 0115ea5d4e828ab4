using System.Text.Json.Nodes;
using CombaDistill.Modeling.Comba;
using CombaDistill.Tests.Support;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Export;

/// <summary>
/// What transformers computed on the GPU host from exports of the students in Data/export/ (Data/export/README.md
/// says how), against our own forward of the same students.
/// </summary>
public class ExportFixtureTests
{
    static string Data(params string[] parts) => Path.Combine([AppContext.BaseDirectory, "Data", "export", .. parts]);

    public static TheoryData<string> Students => new(Directory.GetDirectories(Data()).Select(Path.GetFileName).Where(n => n != "transformers").Order(StringComparer.Ordinal)!);

    [Theory]
    [MemberData(nameof(Students))]
    public void Transformers_loads_the_export_and_computes_our_logits_tokens_and_cached_steps(string name)
    {
        var results = Data("transformers", name + ".safetensors");
        Assert.SkipUnless(File.Exists(results), $"no transformers outputs for '{name}' yet: tools/export-gpu-inputs.sh here, then tools/check_export.py --backend transformers on the GPU host (Data/export/README.md)");
        var summary = JsonNode.Parse(File.ReadAllText(Data("transformers", "summary.json")))!;
        Assert.True(summary["exports"]![name]!["error"] is null, $"{name} failed on the GPU host:\n{summary["exports"]![name]!["error"]}");

        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        using var student = CombaForCausalLM.FromPretrained(Data(name), ScalarType.Float32);
        var ids = ExportStudents.Read(results, "input_ids");
        var ours = student.forward(ids);
        Assert.True(ours.abs().max().item<float>() > 0.5, $"{name}: logits too small for the comparison to mean anything");
        ExportTests.AssertClose(name + " float32 logits", ExportStudents.Read(results, "logits_f32"), ours, 1e-4);
        ExportTests.AssertClose(name + " float32 cached steps", ExportStudents.Read(results, "stepped_f32"), ours, 1e-4);
        Assert.Equal(ExportStudents.CausalLoss(ours, ExportStudents.Read(results, "labels")), ExportStudents.Read(results, "loss_f32").item<float>(), 1e-4);

        var prompt = ids[0].narrow(0, 0, 5).data<long>().ToArray();
        var greedy = ExportStudents.Greedy(student, prompt, 64);
        Assert.Equal(greedy, ExportStudents.Read(results, "greedy_ids")[0].data<long>().ToArray());
        Assert.Equal(greedy, ExportStudents.Read(results, "generate_ids")[0].data<long>().ToArray());

        // bf16 (on the host's GPU) against ours in bf16 on the CPU: each rounds every op to 8 mantissa bits, in its own
        // order, so they differ by a few bf16 steps of the largest logits; 3% of the logit scale still catches a wrong op.
        using var bf16 = CombaForCausalLM.FromPretrained(Data(name), ScalarType.BFloat16);
        var oursBf16 = bf16.forward(ids);
        var scale = ours.abs().max().item<float>();
        ExportTests.AssertClose(name + " bf16 logits", ExportStudents.Read(results, "logits_bf16"), oursBf16, 0.03 * scale);
        ExportTests.AssertClose(name + " bf16 cached steps", ExportStudents.Read(results, "stepped_bf16"), ExportStudents.Read(results, "logits_bf16"), 0.03 * scale);

        // the docs' transformers snippet, run as written: generate() stops at an end-of-sequence id and keeps it
        if (summary["exports"]![name]!["snippet"] is not null)
        {
            var eos = student.Config.EosTokenIds;
            var expected = ExportStudents.Greedy(student, [1, 5, 17, 42], 16).ToList();
            var stop = expected.FindIndex(4, id => eos.Contains((int)id));
            if (stop >= 0) expected = expected[..(stop + 1)];
            Assert.Equal(expected, ExportStudents.Read(results, "snippet_ids")[0].data<long>().ToArray());
        }
    }
}
