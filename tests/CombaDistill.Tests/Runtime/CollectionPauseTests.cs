using System.Runtime;
using CombaDistill.Runtime;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests.Runtime;

/// <summary>The pause's bookkeeping; tools/ScalarRace shows the race it keeps out (it needs minutes and a tuned GC, so it is no test).</summary>
[Collection(ProcessWideState.Name)]
public sealed class CollectionPauseTests
{
    [Fact]
    public void A_pause_holds_collections_off_until_disposed_and_a_nested_one_leaves_it_to_the_outer()
    {
        using (var outer = CollectionPause.Start())
        {
            Assert.True(outer.Started);
            Assert.Equal(GCLatencyMode.NoGCRegion, GCSettings.LatencyMode);
            var collectionsAtStart = GC.CollectionCount(0);
            using (var inner = CollectionPause.Start())
            {
                Assert.False(inner.Started);
                for (var i = 0; i < 1000; i++) GC.KeepAlive(new byte[10_000]);    // 10 MB, well inside the budget
            }
            Assert.Equal(GCLatencyMode.NoGCRegion, GCSettings.LatencyMode);       // the inner scope did not end it
            Assert.Equal(collectionsAtStart, GC.CollectionCount(0));
        }
        Assert.NotEqual(GCLatencyMode.NoGCRegion, GCSettings.LatencyMode);
    }

    [Fact]
    public void Training_pauses_only_when_asked_for()
    {
        using var pause = CollectionPause.Begin();
        Assert.Equal(CollectionPause.Enabled, pause.Started);
        Assert.Equal(CollectionPause.Enabled, GCSettings.LatencyMode == GCLatencyMode.NoGCRegion);
    }

    [Fact]
    public void A_stretch_that_outgrows_the_budget_is_collected_and_its_scope_still_ends_quietly()
    {
        var pause = CollectionPause.Start();
        Assert.True(pause.Started);
        var chunks = (int)(2 * CollectionPause.Budget / (1 << 20));
        for (var i = 0; i < chunks; i++) GC.KeepAlive(new byte[1 << 20]);
        Assert.NotEqual(GCLatencyMode.NoGCRegion, GCSettings.LatencyMode);
        pause.Dispose();
        pause.Dispose();
        Assert.False(default(CollectionPause.Scope).Started);
        default(CollectionPause.Scope).Dispose();
        using var again = CollectionPause.Start();
        Assert.True(again.Started);
    }
}
