using CombaDistill.Runtime;

namespace CombaDistill.Tests.Runtime;

public class StatisticsTests
{
    [Fact]
    public void The_median_is_the_middle_value_or_the_mean_of_the_two_middle_ones()
    {
        Assert.Equal(3.0, Statistics.Median([5.0, 1.0, 3.0]));
        Assert.Equal(2.5, Statistics.Median([4.0, 1.0, 2.0, 3.0]));
        Assert.Equal(7.0, Statistics.Median([7.0]));
        Assert.Throws<ArgumentException>(() => Statistics.Median([]));
    }
}
