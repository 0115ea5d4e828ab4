using CombaDistill.Evaluation;
using CombaDistill.IO;
using CombaDistill.Tests.Modeling;
using CombaDistill.Tests.Support;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Evaluation;

public class MultipleChoiceTests(ImportedStories260K stories) : IClassFixture<ImportedStories260K>
{
    static string WriteJsonl(TempDir temp, params string[] lines)
    {
        var path = temp["task.jsonl"];
        File.WriteAllLines(path, lines);
        return path;
    }

    [Fact]
    public void Reads_the_common_harness_layouts()
    {
        using var temp = new TempDir();
        var path = WriteJsonl(temp,
            """{"query": "The sky is", "choices": [" blue", " green"], "gold": 0}""",
            """{"ctx": "Tom ran", "endings": [" home", " away", " fast"], "label": "2"}""",
            "",
            """{"question": "Pick", "choices": {"text": ["a", "b", "c", "d"], "label": ["A", "B", "C", "D"]}, "answerKey": "C"}""",
            """{"context": "Lily", "options": ["x", "y"], "answer": "B"}""");
        var items = MultipleChoice.Load(path);
        Assert.Equal(4, items.Count);
        Assert.Equal(("The sky is", 0, 1), (items[0].Context, items[0].Gold, items[0].Line));
        Assert.Equal([" blue", " green"], items[0].Choices);
        Assert.Equal(("Tom ran", 2, 2), (items[1].Context, items[1].Gold, items[1].Line));
        Assert.Equal((2, 4), (items[2].Gold, items[2].Line));
        Assert.Equal(1, items[3].Gold);
    }

    [Theory]
    [InlineData("""{"query": "q", "choices": ["a", "b"], "gold": 0""", "line 2: not valid JSON")]
    [InlineData("""{"choices": ["a", "b"], "gold": 0}""", "line 2: no context field (one of context, query, ctx")]
    [InlineData("""{"query": "q", "gold": 0}""", "line 2: no choices field")]
    [InlineData("""{"query": "q", "choices": ["a", "b"]}""", "line 2: no gold field")]
    [InlineData("""{"query": "q", "choices": ["a", "b"], "gold": 2}""", "line 2: gold index 2 is out of range for 2 choices")]
    [InlineData("""{"query": "q", "choices": ["a", "b"], "label": -1}""", "line 2: gold index -1 is out of range")]
    [InlineData("""{"query": "q", "choices": ["a"], "gold": 0}""", "line 2: needs at least 2 choices")]
    [InlineData("""{"query": "q", "choices": ["a", 3], "gold": 0}""", "line 2: choices must be a list of strings")]
    [InlineData("""{"query": "q", "choices": ["a", ""], "gold": 0}""", "line 2: a choice is empty")]
    [InlineData("""{"query": "q", "choices": ["a", "b"], "gold": "maybe"}""", "line 2: gold answer \"maybe\" is not an index")]
    [InlineData("""{"query": 5, "choices": ["a", "b"], "gold": 0}""", "line 2: the context is not a string")]
    public void Malformed_items_name_the_file_and_line(string badLine, string problem)
    {
        using var temp = new TempDir();
        var path = WriteJsonl(temp, """{"query": "fine", "choices": ["a", "b"], "gold": 1}""", badLine);
        var error = Assert.Throws<InvalidInputException>(() => MultipleChoice.Load(path));
        Assert.StartsWith(path + ": ", error.Message);
        Assert.Contains(problem, error.Message);
    }

    [Fact]
    public void An_empty_task_file_is_refused()
    {
        using var temp = new TempDir();
        var path = WriteJsonl(temp, "", "  ");
        Assert.Contains("holds no multiple-choice items", Assert.Throws<InvalidInputException>(() => MultipleChoice.Load(path)).Message);
        Assert.Contains("does not exist", Assert.Throws<InvalidInputException>(() => MultipleChoice.Load(temp["missing.jsonl"])).Message);
    }

    [Fact]
    public void Batched_choice_scores_equal_each_continuation_scored_alone()
    {
        var item = new MultipleChoiceItem("Once upon a time, there was a little girl named", [" Lily.", " a big red ball that rolled away", " Tom"], 0);
        var scores = MultipleChoice.ChoiceLogLikelihoods(stories.Model, stories.Tokenizer, item);

        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var context = stories.Tokenizer.Encode(item.Context, addBos: true);
        for (var c = 0; c < item.Choices.Count; c++)
        {
            var whole = stories.Tokenizer.Encode(item.Context + item.Choices[c], addBos: true);
            Assert.Equal(context, whole[..context.Length]);   // the context's tokens do not merge into these choices
            var logProbs = stories.Model.forward(tensor(whole.Select(i => (long)i).ToArray(), [1, whole.Length]))[0].to(ScalarType.Float64).log_softmax(-1);
            var expected = 0.0;
            for (var t = context.Length; t < whole.Length; t++) expected += logProbs[t - 1, whole[t]].item<double>();
            Assert.Equal(expected, scores[c], 1e-4);
        }
        Assert.True(scores[0] > scores[2], "the trained model should prefer its favourite name");
    }

    [Fact]
    public void Accuracy_and_character_normalised_accuracy_follow_the_scores()
    {
        // Uniform logits: every token costs log V, so the raw score only counts tokens and always
        // prefers the shortest choice, while the normalised score prefers the most characters per token.
        var logits = new float[stories.Tokenizer.VocabSize];
        var model = new FixedLogitsModel(logits);
        var logSoftmax = tensor(logits).to(ScalarType.Float64).log_softmax(0).data<double>().ToArray();
        double Score(string context, string choice) =>
            stories.Tokenizer.Encode(context + choice, addBos: true)[stories.Tokenizer.Encode(context, addBos: true).Length..].Sum(t => logSoftmax[t]);

        string[][] choiceSets = [[" a", " bb cc dd ee", " ff gg"], [" the long one goes here", " x"], [" cat", " dog", " elephants are big", " fish"], [" no", " yes indeed friend"]];
        // the gold answer is always the longest choice
        var items = choiceSets.Select(choices => new MultipleChoiceItem("Context", choices, Array.IndexOf(choices, choices.MaxBy(c => c.Length)))).ToList();
        var result = MultipleChoice.Evaluate(model, stories.Tokenizer, items, cancellationToken: TestContext.Current.CancellationToken);

        int expectedRaw = 0, expectedNorm = 0;
        foreach (var item in items)
        {
            var raw = item.Choices.Select(c => Score("Context", c)).ToArray();
            var norm = raw.Select((s, i) => s / item.Choices[i].Length).ToArray();
            if (Array.IndexOf(raw, raw.Max()) == item.Gold) expectedRaw++;
            if (Array.IndexOf(norm, norm.Max()) == item.Gold) expectedNorm++;
        }
        Assert.Equal(expectedRaw / 4.0, result.Accuracy);
        Assert.Equal(expectedNorm / 4.0, result.NormalisedAccuracy);
        Assert.Equal((1 / 3.0 + 1 / 2.0 + 1 / 4.0 + 1 / 2.0) / 4, result.Chance, 1e-12);
        Assert.Equal(0, result.Accuracy);
        Assert.True(result.NormalisedAccuracy > 0);
    }

    [Fact]
    public void Ratio_above_chance_compares_skill_not_raw_accuracy()
    {
        var teacher = new MultipleChoiceResult(100, 0.75, 0.8, 0.25);
        Assert.Equal(0.5, new MultipleChoiceResult(100, 0.5, 0.5, 0.25).AboveChanceRatio(teacher)!.Value, 1e-12);
        Assert.Equal(1.0, teacher.AboveChanceRatio(teacher));
        Assert.Equal(0.0, new MultipleChoiceResult(100, 0.25, 0.3, 0.25).AboveChanceRatio(teacher));
        Assert.Null(teacher.AboveChanceRatio(new MultipleChoiceResult(100, 0.25, 0.3, 0.25)));
    }
}
