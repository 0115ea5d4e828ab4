using CombaDistill.Conversion;
using CombaDistill.Distillation;
using CombaDistill.IO;
using CombaDistill.Modeling;
using CombaDistill.Modeling.Llama;
using CombaDistill.Tests.Support;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Distillation;

public sealed class TeacherCorpusTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    LlamaForCausalLM Teacher()
    {
        Llama2cImporter.Import(Shared.Stories260KBin, Shared.Tok512Bin, dir["teacher"], force: false, cancellationToken: TestContext.Current.CancellationToken);
        return LlamaForCausalLM.FromPretrained(dir["teacher"]);
    }

    [Fact]
    public void A_seed_writes_the_same_corpus_of_BOS_led_sequences()
    {
        using var teacher = Teacher();
        var options = new CorpusOptions { Tokens = 70, Batch = 3, Length = 15, Seed = 9 };
        var ct = TestContext.Current.CancellationToken;
        Assert.Equal(70, TeacherCorpus.Write(teacher, dir["a.tokens"], options, cancellationToken: ct));
        TeacherCorpus.Write(teacher, dir["b.tokens"], options, cancellationToken: ct);
        TeacherCorpus.Write(teacher, dir["c.tokens"], options with { Seed = 10 }, cancellationToken: ct);
        var a = TokenFile.Read(dir["a.tokens"], 512);
        Assert.Equal(a, TokenFile.Read(dir["b.tokens"], 512));
        Assert.NotEqual(a, TokenFile.Read(dir["c.tokens"], 512));
        Assert.Equal(70, a.Length);
        for (var i = 0; i < a.Length; i += 16) Assert.Equal(teacher.Config.BosTokenId, a[i]);

        // at temperature 0 every row is the teacher's greedy continuation of BOS, the same as Generation gives
        TeacherCorpus.Write(teacher, dir["g.tokens"], options with { Temperature = 0, Tokens = 32 }, cancellationToken: ct);
        var greedy = TokenFile.Read(dir["g.tokens"], 512);
        var expected = Generation.Generate(teacher, [teacher.Config.BosTokenId], new GenerationOptions(15, 0, StopAtEos: false), ct).ToArray();
        Assert.Equal([teacher.Config.BosTokenId, .. expected], greedy[..16]);
        Assert.Equal(greedy[..16], greedy[16..32]);
    }

    [Fact]
    public void Too_long_sequences_and_missing_folders_are_refused()
    {
        using var teacher = Teacher();
        var ct = TestContext.Current.CancellationToken;
        Assert.Contains("context", Assert.Throws<ArgumentException>(() => TeacherCorpus.Write(teacher, dir["x.tokens"], new CorpusOptions { Tokens = 10, Length = 512 }, cancellationToken: ct)).Message);
        Assert.Throws<InvalidInputException>(() => TeacherCorpus.Write(teacher, dir["no/such/x.tokens"], new CorpusOptions { Tokens = 10, Length = 8 }, cancellationToken: ct));
    }

    [Fact]
    public void An_existing_output_is_replaced_only_with_force_and_only_when_it_is_a_token_file()
    {
        using var teacher = Teacher();
        var ct = TestContext.Current.CancellationToken;
        var options = new CorpusOptions { Tokens = 20, Batch = 2, Length = 9, Seed = 1 };
        var corpus = dir["c.tokens"];
        TeacherCorpus.Write(teacher, corpus, options, cancellationToken: ct);
        var first = File.ReadAllBytes(corpus);

        var refused = Assert.Throws<InvalidInputException>(() => TeacherCorpus.Write(teacher, corpus, options with { Seed = 2 }, cancellationToken: ct));
        Assert.Equal($"{corpus}: exists; use --force to replace it", refused.Message);
        Assert.Equal(first, File.ReadAllBytes(corpus));
        TeacherCorpus.Write(teacher, corpus, options with { Seed = 2, Force = true }, cancellationToken: ct);
        Assert.NotEqual(first, File.ReadAllBytes(corpus));

        var notes = dir["notes.txt"];
        File.WriteAllText(notes, "my notes");
        var notTokens = Assert.Throws<InvalidInputException>(() => TeacherCorpus.Write(teacher, notes, options with { Force = true }, cancellationToken: ct));
        Assert.Equal($"{notes}: is not a token file (no 'CDTOKENS' header); --force replaces only a token file this tool wrote", notTokens.Message);
        Assert.Equal("my notes", File.ReadAllText(notes));
        Assert.Contains("is a folder; --out must be a token file",
            Assert.Throws<InvalidInputException>(() => TeacherCorpus.Write(teacher, dir["teacher"], options with { Force = true }, cancellationToken: ct)).Message);
    }
}
