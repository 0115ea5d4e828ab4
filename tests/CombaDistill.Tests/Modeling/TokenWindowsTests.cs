using CombaDistill.Distillation;
using CombaDistill.Modeling;
using CsCheck;

namespace CombaDistill.Tests.Modeling;

public class TokenWindowsTests
{
    [Fact]
    public void Every_token_but_the_first_is_scored_once_in_sliding_windows_and_packed_windows_skip_one_per_window()
    {
        Gen.Select(Gen.Int[2, 300], Gen.Int[2, 64], Gen.Int[1, 64]).Sample((count, length, strideSeed) =>
        {
            var stride = 1 + (strideSeed - 1) % (length - 1);   // below the window: overlapping windows
            var sliding = new Windowing(length, stride).Over(count).ToList();
            var scored = sliding.SelectMany(w => Enumerable.Range(w.Start + w.FirstScored, w.Length - w.FirstScored)).ToList();
            Assert.Equal(Enumerable.Range(1, count - 1), scored);
            foreach (var w in sliding)
            {
                Assert.InRange(w.Length, 2, length);
                Assert.InRange(w.FirstScored, 1, w.Length - 1);
                // after the first window, every scored token sees at least length − stride tokens before it
                if (w.Start > 0) Assert.True(w.FirstScored >= length - stride, $"window at {w.Start} scores from {w.FirstScored}");
            }

            var packed = new Windowing(length).Over(count).ToList();
            Assert.All(packed, w => Assert.Equal(1, w.FirstScored));
            Assert.Equal(Enumerable.Range(0, count).Where(i => i % length != 0),
                packed.SelectMany(w => Enumerable.Range(w.Start + 1, w.Length - 1)));
        });
    }

    [Fact]
    public void A_stride_equal_to_the_window_is_packed_and_bad_settings_are_refused()
    {
        Assert.Equal(new Windowing(16).Over(100), new Windowing(16, 16).Over(100));
        Assert.Equal([new TokenWindow(0, 512, 1)], new Windowing(512).Over(512));
        Assert.Throws<ArgumentException>(() => new Windowing(1).Validate());
        Assert.Throws<ArgumentException>(() => new Windowing(8, 9).Validate());
        Assert.Throws<ArgumentException>(() => new Windowing(8, 0).Validate());
    }

    [Fact]
    public void Chained_windows_are_the_training_windows_so_held_out_perplexity_scores_what_training_predicts()
    {
        Gen.Select(Gen.Int[2, 300], Gen.Int[1, 40]).Sample((count, length) =>
        {
            var stream = Enumerable.Range(0, count).ToArray();
            var training = new PackedSequences(stream, length);
            var windowing = Windowing.Chained(length);
            var chained = windowing.Over(count).Where(w => w.Length == windowing.Length).ToList();
            Assert.Equal(training.Count, chained.Count);
            for (var i = 0; i < chained.Count; i++)
            {
                Assert.Equal(training.Window(i).ToArray(), stream[chained[i].Start..(chained[i].Start + chained[i].Length)]);
                Assert.Equal(1, chained[i].FirstScored);
            }
        });
    }
}
