using CombaDistill.Evaluation;
using CombaDistill.Tests.Modeling;

namespace CombaDistill.Tests.Evaluation;

public class MqarTests(ImportedStories260K stories) : IClassFixture<ImportedStories260K>
{
    [Fact]
    public void A_sequence_holds_the_pairs_filler_and_every_key_queried_once()
    {
        var pool = Mqar.WordTokens(stories.Tokenizer);
        Assert.True(pool.Length > 100, $"{pool.Length} word tokens");
        Assert.All(pool, id => Assert.True(stories.Tokenizer.Decode([id]).Trim().All(char.IsLetter)));
        var sequence = Mqar.Sample(pairs: 8, length: 100, pool, bos: 1, new Random(5));
        var ids = sequence.Ids;
        Assert.Equal(100, ids.Length);
        Assert.Equal(1, ids[0]);
        var values = Enumerable.Range(0, 8).ToDictionary(i => ids[1 + 2 * i], i => ids[2 + 2 * i]);
        Assert.Equal(16, values.Keys.Concat(values.Values).Distinct().Count());
        var filler = ids[17..(100 - 16)];
        Assert.Equal(100 - 1 - 32, filler.Length);
        Assert.DoesNotContain(filler, id => values.ContainsKey(id) || values.ContainsValue(id));
        Assert.Equal(values.Keys.Order(), sequence.QueryPositions.Select(p => ids[p]).Order());
        for (var q = 0; q < 8; q++)
        {
            Assert.Equal(values[ids[sequence.QueryPositions[q]]], sequence.Answers[q]);
            Assert.Equal(sequence.Answers[q], ids[sequence.QueryPositions[q] + 1]);
        }
        Assert.Throws<ArgumentException>(() => Mqar.Sample(8, 32, pool, 1, new Random(5)));
    }

    [Fact]
    public void A_model_that_copies_recalls_everything()
    {
        var pool = Mqar.WordTokens(stories.Tokenizer);
        var cells = Mqar.Evaluate(new SuffixCopyModel(stories.Tokenizer.VocabSize), pool, new MqarOptions([2, 8, 32], [16, 64, 256], Samples: 3), cancellationToken: TestContext.Current.CancellationToken);
        // (32 pairs, 16 or 64 tokens) cannot be built and is left out
        Assert.Equal([(2, 16), (2, 64), (2, 256), (8, 64), (8, 256), (32, 256)], cells.Select(c => (c.Pairs, c.Length)));
        Assert.All(cells, c => Assert.Equal(1.0, c.Accuracy));
        Assert.All(cells, c => Assert.Equal(3 * c.Pairs, c.Queries));
    }

    [Fact]
    public void A_model_with_a_short_memory_recalls_only_what_lies_within_it()
    {
        // A query sits at least (filler + 2) tokens after its pair. With 4 pairs and a 48-token memory every pair is
        // in reach at 24 tokens (no filler) and none is at 256 (≥ 239 tokens of filler).
        var pool = Mqar.WordTokens(stories.Tokenizer);
        var cells = Mqar.Evaluate(new SuffixCopyModel(stories.Tokenizer.VocabSize, lookback: 48), pool, new MqarOptions([4], [17, 256], Samples: 4), cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal([1.0, 0.0], cells.Select(c => c.Accuracy));
    }

    [Fact]
    public void The_teacher_is_scored_on_the_same_sequences_every_run()
    {
        var pool = Mqar.WordTokens(stories.Tokenizer);
        var options = new MqarOptions([4], [64], Samples: 4);
        var first = Mqar.Evaluate(stories.Model, pool, options, cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(first, Mqar.Evaluate(stories.Model, pool, options, cancellationToken: TestContext.Current.CancellationToken));
        Assert.InRange(first[0].Accuracy, 0, 1);
    }
}

public class PasskeyTests(ImportedStories260K stories) : IClassFixture<ImportedStories260K>
{
    [Theory]
    [InlineData(200, 0.0)]
    [InlineData(300, 0.5)]
    [InlineData(512, 1.0)]
    public void A_prompt_fits_its_length_and_ends_with_the_key(int length, double depth)
    {
        var prompt = Passkey.Build(stories.Tokenizer, length, depth, 48213);
        Assert.InRange(prompt.Ids.Length, length - 12, length);
        Assert.Equal(stories.Tokenizer.BosId, prompt.Ids[0]);
        Assert.Equal("48213", stories.Tokenizer.Decode(prompt.Ids[prompt.AnswerStart..]).Trim());
        var text = stories.Tokenizer.Decode(prompt.Ids[..prompt.AnswerStart]);
        Assert.EndsWith("What is the pass key? The pass key is", text.TrimEnd());
        // the needle sits at the requested depth of the filler (measured in characters)
        const string needle = " The pass key is 48213. Remember it. 48213 is the pass key.";
        var at = text.IndexOf(needle, StringComparison.Ordinal);
        var fillerStart = text.IndexOf("remember it.", StringComparison.Ordinal) + "remember it.".Length;
        var fillerEnd = text.LastIndexOf(" What is", StringComparison.Ordinal);
        var fillerLength = fillerEnd - fillerStart - needle.Length;
        Assert.True(fillerLength > 100, $"{fillerLength} characters of filler");
        Assert.InRange((double)(at - fillerStart) / fillerLength, depth - 0.05, depth + 0.05);
    }

    [Fact]
    public void A_model_that_copies_finds_every_key_and_a_short_memory_only_the_near_ones()
    {
        var options = new PasskeyOptions([256, 512], [0, 1], Trials: 2);
        var copier = Passkey.Evaluate(new SuffixCopyModel(stories.Tokenizer.VocabSize), stories.Tokenizer, options, cancellationToken: TestContext.Current.CancellationToken);
        Assert.All(copier, c => Assert.Equal(1.0, c.Accuracy));
        Assert.Equal([(256, 0.0), (256, 1.0), (512, 0.0), (512, 1.0)], copier.Select(c => (c.Length, c.Depth)));

        // With 64 tokens of memory the key is found only where it sits just before the question.
        var forgetful = Passkey.Evaluate(new SuffixCopyModel(stories.Tokenizer.VocabSize, lookback: 64), stories.Tokenizer, options, cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal([0.0, 1.0, 0.0, 1.0], forgetful.Select(c => c.Accuracy));
    }

    [Fact]
    public void The_teacher_is_asked_the_same_keys_every_run()
    {
        var options = new PasskeyOptions([128], [0.5], Trials: 2);
        var first = Passkey.Evaluate(stories.Model, stories.Tokenizer, options, cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(first, Passkey.Evaluate(stories.Model, stories.Tokenizer, options, cancellationToken: TestContext.Current.CancellationToken));
        Assert.InRange(first[0].MeanTokens, 100, 128);
    }
}
