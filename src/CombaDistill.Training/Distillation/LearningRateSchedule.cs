namespace CombaDistill.Distillation;

/// <summary>
/// The learning rate of optimizer step <c>step</c> (0-based): linear warmup over <see cref="ScheduleRecipe.WarmupSteps"/>
/// (step 0 already takes 1/W of the peak, never 0), then constant, or a half cosine from the peak to
/// <see cref="ScheduleRecipe.MinLearningRate"/> at the last step. A pure function of the step, so the scheduler's
/// whole state is the step number.
/// </summary>
public static class LearningRateSchedule
{
    public static double At(StageRecipe stage, long step)
    {
        var (peak, schedule, total) = (stage.Optimizer.LearningRate, stage.Schedule, stage.TotalSteps);
        if (step < schedule.WarmupSteps) return peak * (step + 1) / schedule.WarmupSteps;
        if (schedule.Kind == ScheduleKind.Constant) return peak;
        var decaySteps = total - schedule.WarmupSteps - 1;
        var progress = decaySteps <= 0 ? 0.0 : Math.Min(1.0, (double)(step - schedule.WarmupSteps) / decaySteps);
        return schedule.MinLearningRate + (peak - schedule.MinLearningRate) * 0.5 * (1 + Math.Cos(Math.PI * progress));
    }
}
