using CombaDistill.Runtime;

namespace CombaDistill.Tests.Runtime;

public sealed class EnvironmentSwitchTests
{
    [Theory]
    [InlineData(null, true, true)]
    [InlineData(null, false, false)]
    [InlineData(" Off ", true, false)]
    [InlineData("0", true, false)]
    [InlineData("YES", false, true)]
    [InlineData("1", false, true)]
    [InlineData("maybe", true, true)]      // not a switch value: the default stands
    [InlineData("maybe", false, false)]
    public void Values_turn_it_on_or_off_and_anything_else_keeps_the_default(string? value, bool whenUnset, bool expected)
    {
        // a variable no other test reads, so setting it disturbs nothing running beside this test
        var name = $"COMBADISTILL_TEST_SWITCH_{Guid.NewGuid():N}";
        Environment.SetEnvironmentVariable(name, value);
        try { Assert.Equal(expected, EnvironmentSwitch.IsOn(name, whenUnset)); }
        finally { Environment.SetEnvironmentVariable(name, null); }
    }
}
