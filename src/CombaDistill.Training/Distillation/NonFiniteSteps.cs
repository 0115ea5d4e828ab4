namespace CombaDistill.Distillation;

/// <summary>
/// Keeps a diverging stage from training on: a step whose loss or gradient norm is NaN or infinite applies no update
/// (its gradients are dropped), and more than <c>max_nonfinite_steps</c> of them in a row stop the stage. The weights
/// and every checkpoint written so far are then still the last finite ones. Loss and gradient norm are the same on
/// every rank of a data-parallel job, so all ranks skip and stop together.
/// </summary>
public sealed class NonFiniteSteps(string stage, int tolerated)
{
    /// <summary>Non-finite steps in a row, up to the last one observed.</summary>
    public int InARow { get; private set; }

    /// <summary>Non-finite steps in this session of the stage.</summary>
    public long Total { get; private set; }

    /// <summary>Whether step <paramref name="step"/>'s update may be applied; throws once too many in a row were not.</summary>
    /// <exception cref="TrainingDivergedException">more than the tolerated number of non-finite steps in a row</exception>
    public bool Observe(long step, double loss, double gradientNorm)
    {
        if (double.IsFinite(loss) && double.IsFinite(gradientNorm))
        {
            InARow = 0;
            return true;
        }
        InARow++;
        Total++;
        if (InARow > tolerated) throw new TrainingDivergedException(stage, step, InARow, loss, gradientNorm);
        return false;
    }
}

/// <summary>A stage stopped because its loss or gradient norm stayed non-finite.</summary>
public sealed class TrainingDivergedException(string stage, long step, int inARow, double loss, double gradientNorm)
    : Exception($"stage '{stage}' stopped at step {step}: the loss ({loss}) or the gradient norm ({gradientNorm}) was not finite " +
        $"in {inARow} step(s) in a row, more than its max_nonfinite_steps. No update was applied in those steps, so the " +
        "checkpoints written so far hold finite weights. Lower the stage's learning rate or check its data, then run the stage again.")
{
    public string Stage { get; } = stage;
    public long Step { get; } = step;
}
