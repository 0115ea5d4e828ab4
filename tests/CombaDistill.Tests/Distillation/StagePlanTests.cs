using CombaDistill.Distillation;

namespace CombaDistill.Tests.Distillation;

/// <summary>The stage plan on imagined run folders: which stages run, are kept, shard or merge, and what is refused.</summary>
public class StagePlanTests
{
    const string Run = "/runs/r", Initial = "/runs/r/student-init";

    static readonly Recipe Recipe = new()
    {
        SourcePath = "/recipes/r.yaml", Teacher = new(), Student = new(),
        Data = new DataRecipe { Train = new DataSource("/data/t.txt", DataFormat.Text) },
        Stages =
        [
            new StageRecipe { Name = "align", Objective = Objective.AttentionAlignment, Trainable = TrainableSelection.Of("comba"), Steps = 1 },
            new StageRecipe { Name = "kd", Objective = Objective.Distillation, Trainable = TrainableSelection.Of("all"), Steps = 1 },
            new StageRecipe { Name = "long", Objective = Objective.FineTuning, Trainable = TrainableSelection.Of("all"), Steps = 1 },
        ],
    };

    static string Result(int stage) => $"{Run}/0{stage + 1}-{Recipe.Stages[stage].Name}/student";

    /// <summary>A run folder in which exactly <paramref name="complete"/> hold complete students, <paramref name="finishedShards"/> finished shard jobs, and <paramref name="folders"/> exist.</summary>
    static RunFolderProbe Folder(string[] complete, string[]? finishedShards = null, string[]? folders = null) => new(
        p => complete.Contains(p), p => (finishedShards ?? []).Contains(p), p => (folders ?? []).Contains(p));

    static IReadOnlyList<PlannedStage> Plan(DistillOptions options, RunFolderProbe folder) => StagePlan.Decide(Recipe, Run, Initial, options, folder);

    static string Actions(IEnumerable<PlannedStage> plan) => string.Join(" ", plan.Select(p => $"{p.Index}:{p.Action}"));

    [Fact]
    public void A_fresh_run_trains_every_stage_each_from_the_one_before()
    {
        var plan = Plan(new DistillOptions(), Folder([Initial]));
        Assert.Equal("0:Train 1:Train 2:Train", Actions(plan));
        Assert.Equal([Initial, Result(0), Result(1)], plan.Select(p => p.Input));
        Assert.Equal(["/runs/r/01-align", "/runs/r/02-kd", "/runs/r/03-long"], plan.Select(p => p.Folder));
    }

    [Fact]
    public void Resume_keeps_finished_stages_and_retrains_everything_after_the_first_unfinished_one()
    {
        Assert.Equal("0:Keep 1:Train 2:Train", Actions(Plan(new DistillOptions { Resume = true }, Folder([Initial, Result(0), Result(2)]))));
        Assert.Equal("0:Keep 1:Keep 2:Keep", Actions(Plan(new DistillOptions { Resume = true }, Folder([Initial, Result(0), Result(1), Result(2)]))));
        // without --resume, a finished stage is trained again
        Assert.Equal("0:Train 1:Train 2:Train", Actions(Plan(new DistillOptions(), Folder([Initial, Result(0), Result(1), Result(2)]))));
    }

    [Fact]
    public void One_stage_runs_alone_from_its_predecessors_result_and_is_refused_without_it()
    {
        var plan = Plan(new DistillOptions { OnlyStage = "kd", Resume = true }, Folder([Initial, Result(0), Result(1)]));
        Assert.Equal("1:Train", Actions(plan));   // --stage reruns it even when finished
        var error = Assert.Throws<InvalidInputException>(() => Plan(new DistillOptions { OnlyStage = "long" }, Folder([Initial, Result(0)])));
        Assert.Equal($"{Result(1)}: stage 'long' cannot start: its predecessor 'kd' has no result here; run that stage first", error.Message);
        var unknown = Assert.Throws<InvalidInputException>(() => Plan(new DistillOptions { OnlyStage = "nope" }, Folder([Initial])));
        Assert.Contains("has no stage named 'nope'; its stages are align, kd, long", unknown.Message);
    }

    [Fact]
    public void Shard_jobs_work_in_their_own_folder_are_kept_when_finished_and_merge_into_the_stage()
    {
        var shard = new LayerShard(1, 2);
        var shardFolder = "/runs/r/01-align/shards/1-of-2";
        var plan = Plan(new DistillOptions { OnlyStage = "align", Shard = shard }, Folder([Initial]));
        Assert.Equal("0:Train", Actions(plan));
        Assert.Equal(shardFolder, plan[0].WorkFolder);
        Assert.Equal("0:KeepShard", Actions(Plan(new DistillOptions { OnlyStage = "align", Shard = shard, Resume = true }, Folder([Initial], [shardFolder]))));
        Assert.Equal("0:Train", Actions(Plan(new DistillOptions { OnlyStage = "align", Shard = shard, Resume = true }, Folder([Initial]))));

        var shards = "/runs/r/01-align/shards";
        Assert.Equal("0:Merge", Actions(Plan(new DistillOptions { OnlyStage = "align", MergeShards = true }, Folder([Initial], folders: [shards]))));
        // a whole-stage run never silently trains over shard results
        var error = Assert.Throws<InvalidInputException>(() => Plan(new DistillOptions(), Folder([Initial], folders: [shards])));
        Assert.Contains("holds shard jobs' results for stage 'align'; merge them (--stage align --merge-shards)", error.Message);
    }
}
