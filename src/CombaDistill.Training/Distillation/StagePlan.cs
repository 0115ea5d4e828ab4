namespace CombaDistill.Distillation;

/// <summary>What one selected stage of a run does.</summary>
public enum StageAction
{
    /// <summary>The stage finished in an earlier run; on --resume its result is kept.</summary>
    Keep,
    /// <summary>This shard job finished in an earlier run; on --resume its result is kept.</summary>
    KeepShard,
    /// <summary>Train the stage: in one job, or the shard of it that --shard names.</summary>
    Train,
    /// <summary>Merge the shard jobs' results into the stage's result (--merge-shards).</summary>
    Merge,
}

/// <summary>
/// One stage in a plan: its index in the recipe, what happens to it, its folder, where it works (the stage folder, or
/// its shard's folder) and the student it starts from.
/// </summary>
public sealed record PlannedStage(int Index, StageAction Action, string Folder, string WorkFolder, string Input);

/// <summary>What the plan needs to know of a run folder; <see cref="StagePlan.OnDisk"/> asks the file system.</summary>
public sealed record RunFolderProbe(Func<string, bool> IsCompleteStudent, Func<string, bool> IsFinishedShard, Func<string, bool> FolderExists);

/// <summary>
/// Decides, before anything loads, which stages of a recipe run, which are kept, which run as a shard job and which
/// merge shards, from the options and what the run folder holds. A state the run cannot go on from is refused here,
/// naming the folder. No tensors: <see cref="DistillationRun"/> carries the plan out.
/// </summary>
public static class StagePlan
{
    public static RunFolderProbe OnDisk { get; } = new(StudentFolder.IsComplete, AlignmentShards.IsFinished, Directory.Exists);

    public static string StageFolder(string runFolder, Recipe recipe, int index) => Path.Combine(runFolder, $"{index + 1:D2}-{recipe.Stages[index].Name}");

    public static string ResultOf(string stageFolder) => Path.Combine(stageFolder, StageTrainer.ResultFolder);

    public static IReadOnlyList<PlannedStage> Decide(Recipe recipe, string runFolder, string initialStudent, DistillOptions options, RunFolderProbe? probe = null)
    {
        probe ??= OnDisk;
        var selected = options.OnlyStage is null ? Enumerable.Range(0, recipe.Stages.Count) : [IndexOfStage(recipe, options.OnlyStage)];
        var plan = new List<PlannedStage>();
        // Once a stage trains, every later result is made again from it (the run deletes the old ones), so none is kept.
        var retraining = false;
        foreach (var i in selected)
        {
            var stage = recipe.Stages[i];
            var folder = StageFolder(runFolder, recipe, i);
            var input = i == 0 ? initialStudent : ResultOf(StageFolder(runFolder, recipe, i - 1));
            if (options.Resume && options.OnlyStage is null && !retraining && probe.IsCompleteStudent(ResultOf(folder)))
            {
                plan.Add(new PlannedStage(i, StageAction.Keep, folder, folder, input));
                continue;
            }
            // A shard job works in its own folder under the stage's; a finished one is kept on --resume, as a finished stage is.
            var workFolder = options.Shard is { } shard ? AlignmentShards.Folder(folder, shard) : folder;
            if (options.Shard is not null && options.Resume && probe.IsFinishedShard(workFolder))
            {
                plan.Add(new PlannedStage(i, StageAction.KeepShard, folder, workFolder, input));
                continue;
            }
            var shards = Path.Combine(folder, AlignmentShards.ShardsFolder);
            if (options.Shard is null && !options.MergeShards && probe.FolderExists(shards))
                throw new InvalidInputException(folder, $"holds shard jobs' results for stage '{stage.Name}'; merge them (--stage {stage.Name} --merge-shards), or delete {shards} to train the stage in one job");
            var madeBefore = plan.Count > 0 && plan[^1].Index == i - 1 && plan[^1].Action is StageAction.Train or StageAction.Merge && options.Shard is null;
            if (!madeBefore && !probe.IsCompleteStudent(input))
                throw new InvalidInputException(input, i == 0 ? $"stage '{stage.Name}' cannot start: the initial student is incomplete"
                    : $"stage '{stage.Name}' cannot start: its predecessor '{recipe.Stages[i - 1].Name}' has no result here; run that stage first");
            plan.Add(new PlannedStage(i, options.MergeShards ? StageAction.Merge : StageAction.Train, folder, workFolder, input));
            retraining = true;
        }
        return plan;
    }

    /// <summary>Shard jobs and their merge name one attention_alignment stage, and a job does one or the other.</summary>
    public static void CheckShardOptions(Recipe recipe, DistillOptions options)
    {
        if (options.Shard is null && !options.MergeShards) return;
        if (options.Shard is not null && options.MergeShards)
            throw new ArgumentException("a job either trains a shard (--shard) or merges the shards (--merge-shards), not both");
        var what = options.MergeShards ? "merging shards" : $"shard {options.Shard}";
        if (options.OnlyStage is null)
            throw new ArgumentException($"{what} needs the stage it belongs to (--stage NAME, an attention_alignment stage)");
        var stage = recipe.Stages[IndexOfStage(recipe, options.OnlyStage)];
        if (stage.Objective != Objective.AttentionAlignment)
            throw new InvalidInputException(recipe.SourcePath, $"stage '{stage.Name}' is {RecipeLoader.NameOf(stage.Objective)}: only attention_alignment stages train their layers independently and run as shards");
    }

    static int IndexOfStage(Recipe recipe, string name)
    {
        for (var i = 0; i < recipe.Stages.Count; i++)
            if (recipe.Stages[i].Name == name) return i;
        throw new InvalidInputException(recipe.SourcePath, $"has no stage named '{name}'; its stages are {string.Join(", ", recipe.Stages.Select(s => s.Name))}");
    }
}
