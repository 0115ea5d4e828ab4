namespace CombaDistill.Distillation;

/// <summary>
/// What a run reports as it goes: after every optimizer step the numbers for a progress bar, and between steps
/// notes (importing, converting, resuming, evaluating) and warnings (a damaged checkpoint skipped).
/// </summary>
public sealed record DistillationProgress
{
    public required string Stage { get; init; }
    /// <summary>0-based position of the stage in the recipe.</summary>
    public int StageIndex { get; init; }
    public int StageCount { get; init; }
    public long Step { get; init; }
    public long TotalSteps { get; init; }
    public long Tokens { get; init; }
    public long TotalTokens { get; init; }
    public double TokensPerSecond { get; init; }
    /// <summary>The last step's loss (NaN before the first step).</summary>
    public double Loss { get; init; } = double.NaN;
    public double LearningRate { get; init; }
    /// <summary>Time left in this stage at the current speed; null until measured.</summary>
    public TimeSpan? Eta { get; init; }
    /// <summary>A message instead of step numbers; <see cref="IsWarning"/> when something was skipped or repaired.</summary>
    public string? Note { get; init; }
    public bool IsWarning { get; init; }
}
