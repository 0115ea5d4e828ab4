using CombaDistill.Conversion;
using CombaDistill.Modeling;
using CombaDistill.Modeling.Comba;
using CombaDistill.Modeling.Llama;
using CombaDistill.Tests.Support;
using CombaDistill.Tokenization;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Conversion;

/// <summary>The untrained student is already a language model: its loss on real text is far below uniform, and its converted layers help.</summary>
public class SensibleStudentTests(ITestOutputHelper output)
{
    /// <summary>Mean next-token negative log-likelihood in nats.</summary>
    static double Loss(ICausalLM model, long[] ids)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var input = tensor(ids, [1, ids.Length]);
        var logits = model.Forward(input)[0];
        return nn.functional.cross_entropy(logits[..^1], input[0][1..]).item<float>();
    }

    [Fact]
    public void Untrained_stories260K_student_is_far_below_uniform_and_better_than_without_its_mixers()
    {
        using var temp = new TempDir();
        var teacherFolder = TeacherFolders.ImportStories260K(temp["teacher"]);
        CombaConverter.Convert(teacherFolder, temp["student"], new ConversionOptions(), cancellationToken: TestContext.Current.CancellationToken);
        var tokenizer = TokenizerLoader.Load(temp["student"]);
        var text = new string(File.ReadAllText(Shared.TinyStoriesValid).Take(8000).ToArray());
        var ids = tokenizer.Encode(text, addBos: true).Take(512).Select(i => (long)i).ToArray();
        Assert.Equal(512, ids.Length);

        using var teacher = LlamaForCausalLM.FromPretrained(teacherFolder);
        using var student = CombaForCausalLM.FromPretrained(temp["student"]);
        var uniform = Math.Log(512);
        var teacherLoss = Loss(teacher, ids);
        var studentLoss = Loss(student, ids);
        using (no_grad())
            foreach (var layer in student.model.layers) ((CombaAttention)layer.self_attn).o_proj.weight!.zero_();
        var withoutMixers = Loss(student, ids);
        output.WriteLine($"nats/token on 512 tokens: uniform {uniform:F3}, teacher {teacherLoss:F3}, student {studentLoss:F3}, student without mixers {withoutMixers:F3}");

        Assert.True(double.IsFinite(studentLoss));
        Assert.True(studentLoss < uniform - 2, $"student loss {studentLoss:F3} is not far below uniform {uniform:F3}");
        Assert.True(studentLoss < withoutMixers - 0.5, $"the converted layers do not help: {studentLoss:F3} with, {withoutMixers:F3} without");
        Assert.True(teacherLoss < studentLoss);
    }
}
