using Polly;
using Polly.Retry;

namespace CombaDistill.IO;

/// <summary>
/// Retries reads and opens that fail for reasons that can pass (network filesystems, a file
/// briefly locked). A missing file, a missing folder or a denied permission will not fix
/// itself, so those fail at once; so does truncation (EndOfStreamException).
/// </summary>
public static class IoRetry
{
    public static ResiliencePipeline Default { get; } = Create(maxRetries: 3, baseDelay: TimeSpan.FromMilliseconds(100));

    public static ResiliencePipeline Create(int maxRetries, TimeSpan baseDelay) =>
        new ResiliencePipelineBuilder()
            .AddRetry(new RetryStrategyOptions
            {
                ShouldHandle = new PredicateBuilder().Handle<IOException>(IsTransient),
                MaxRetryAttempts = maxRetries,
                Delay = baseDelay,
                BackoffType = DelayBackoffType.Exponential,
                UseJitter = baseDelay > TimeSpan.Zero,
            })
            .Build();

    public static bool IsTransient(IOException e) =>
        e is not (FileNotFoundException or DirectoryNotFoundException or EndOfStreamException or PathTooLongException);

    public static T Execute<T>(Func<T> action, ResiliencePipeline? pipeline = null) => (pipeline ?? Default).Execute(action);

    public static void Execute(Action action, ResiliencePipeline? pipeline = null) => (pipeline ?? Default).Execute(action);
}
