using CombaDistill.Distillation;
using CombaDistill.IO;
using CombaDistill.Modeling.Llama;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests.Distillation;

/// <summary>The recipes in recipes/ load as shipped (environment variables are process-wide, so this runs alone).</summary>
[Collection(ProcessWideState.Name)]
public sealed class ShippedRecipesTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    static string Recipe(string name) => Path.Combine(Shared.RepoRoot, "recipes", name);

    [Fact]
    public void The_stories260K_recipes_load_from_the_repository_with_the_budgets_docs_report()
    {
        var recipe = RecipeLoader.Load(Recipe("stories260k.yaml"));
        Assert.Equal(["align", "kd", "long"], recipe.Stages.Select(s => s.Name));
        Assert.Equal(1_382_400, recipe.Stages.Sum(s => s.TotalSteps * s.TokensPerStep));      // docs/distillation.md
        Assert.Equal("taylor", recipe.Student.Comba.FeatureMap);
        Assert.True(recipe.Student.Comba.NormalizeReadout);

        var scratch = RecipeLoader.Load(Recipe("stories260k-scratch.yaml"));
        Assert.True(scratch.Student.FromScratch);
        Assert.Equal(recipe.Student.Comba, scratch.Student.Comba);                                // the same architecture
        Assert.Equal(1_382_400, scratch.Stages.Sum(s => s.TotalSteps * s.TokensPerStep));        // on the same tokens
    }

    [Fact]
    public void The_1B_recipe_loads_for_a_Llama_3_2_1B_shaped_teacher_and_names_what_is_missing()
    {
        const string teacherVariable = "COMBADISTILL_TEACHER", dataVariable = "COMBADISTILL_DATA";
        var saved = (Environment.GetEnvironmentVariable(teacherVariable), Environment.GetEnvironmentVariable(dataVariable));
        try
        {
            Environment.SetEnvironmentVariable(teacherVariable, null);
            Environment.SetEnvironmentVariable(dataVariable, Shared.TinyStoriesValid);
            var missing = Assert.Throws<InvalidInputException>(() => RecipeLoader.Load(Recipe("llama-3.2-1b.yaml")));
            Assert.Contains("teacher.path", missing.Message);
            Assert.Contains("${COMBADISTILL_TEACHER}, which is not set", missing.Message);

            // Llama-3.2-1B's attention and context at a width a test can write (the recipe checks heads and context)
            var teacher = dir["teacher"];
            SyntheticLlama.Write(teacher, new LlamaConfig
            {
                ModelType = "llama", VocabSize = 256 + 128 * 256 + 256, HiddenSize = 128, IntermediateSize = 256, NumHiddenLayers = 2,
                NumAttentionHeads = 32, NumKeyValueHeads = 8, HeadDim = 64, MaxPositionEmbeddings = 131072, RmsNormEps = 1e-5,
                TieWordEmbeddings = true, TorchDtype = "bfloat16",
            }, seed: 1, cancellationToken: TestContext.Current.CancellationToken);
            Environment.SetEnvironmentVariable(teacherVariable, teacher);
            var recipe = RecipeLoader.Load(Recipe("llama-3.2-1b.yaml"));

            Assert.Equal(Path.GetFullPath(teacher), recipe.Teacher.Folder);
            Assert.Equal(Shared.TinyStoriesValid, recipe.Data.Train.Path);
            Assert.Equal([Objective.AttentionAlignment, Objective.Distillation], recipe.Stages.Select(s => s.Objective));
            Assert.All(recipe.Stages, s => Assert.Equal(65_536, s.TokensPerStep));
            Assert.Equal(1526, recipe.Stages[0].TotalSteps);            // 100M tokens, rounded up to whole steps
            Assert.Equal(3815, recipe.Stages[1].TotalSteps);            // 250M
            Assert.Equal((1e-3, 1e-5), (recipe.Stages[0].Optimizer.LearningRate, recipe.Stages[0].Schedule.MinLearningRate));
            Assert.Equal(1e-5, recipe.Stages[1].Optimizer.LearningRate);
            // what the fused CUDA kernels take: chunk 64, Dk = Dv = the teacher's head dim
            Assert.Equal(64, recipe.Student.Comba.ChunkSize);
            Assert.Equal(recipe.Student.Comba.KeyDim(64), recipe.Student.Comba.ValueDim(64));
            foreach (var gpus in new[] { 1, 2, 4, 8 }) DataParallel.Check(recipe, gpus);
            Assert.Throws<InvalidInputException>(() => DataParallel.Check(recipe, 3));

            // and with its variables set, every recipe in recipes/ loads (a new one is checked without a new test)
            foreach (var file in Directory.GetFiles(Path.Combine(Shared.RepoRoot, "recipes"), "*.yaml"))
                Assert.NotEmpty(RecipeLoader.Load(file).Stages);
        }
        finally
        {
            Environment.SetEnvironmentVariable(teacherVariable, saved.Item1);
            Environment.SetEnvironmentVariable(dataVariable, saved.Item2);
        }
    }
}
