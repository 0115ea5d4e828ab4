using CombaDistill.Distillation;
using CombaDistill.IO;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests.Distillation;

public sealed class RecipeTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    /// <summary>A complete, valid recipe; tests break one thing at a time.</summary>
    string Valid => $"""
        seed: 7
        teacher:
          llama2c: {Shared.Stories260KBin}
          tokenizer: {Shared.Tok512Bin}
        student:
          convert:
            short_conv: 4
            chunk_size: 16
        data:
          train: {Shared.TinyStoriesTrain}
          validation:
            path: {Shared.TinyStoriesValid}
            max_tokens: 4096
          add_eos: false
        stages:
          - name: align
            objective: attention_alignment
            trainable: comba
            optimizer: {"{"} lr: 1e-3, betas: [0.9, 0.99], weight_decay: 0.01 {"}"}
            schedule: {"{"} kind: cosine, warmup_steps: 5, min_lr: 1e-5 {"}"}
            tokens: 100k
            sequence_length: 128
            micro_batch: 4
          - name: kd
            objective: distillation
            steps: 50
            temperature: 2
            ce_weight: 0.1
            grad_clip: none
        """;

    Recipe Parse(string yaml)
    {
        var path = dir["recipe.yaml"];
        File.WriteAllText(path, yaml);
        return RecipeLoader.Load(path);
    }

    InvalidInputException Fails(string yaml) => Assert.Throws<InvalidInputException>(() => Parse(yaml));

    [Fact]
    public void Valid_recipe_reads_every_field()
    {
        var r = Parse(Valid);
        Assert.Equal(7, r.Seed);
        Assert.Equal(Shared.Stories260KBin, r.Teacher.Llama2cCheckpoint);
        Assert.Null(r.Teacher.Folder);
        Assert.Equal(16, r.Student.Comba.ChunkSize);
        Assert.Equal(DataFormat.Text, r.Data.Train.Format);
        Assert.Equal(4096, r.Data.Validation!.MaxTokens);
        Assert.False(r.Data.AddEos);
        Assert.True(r.Data.AddBos);

        var align = r.Stages[0];
        Assert.Equal(Objective.AttentionAlignment, align.Objective);
        Assert.Equal("comba", align.Trainable.Preset);
        Assert.Equal(1e-3, align.Optimizer.LearningRate);
        Assert.Equal((0.9, 0.99), (align.Optimizer.Beta1, align.Optimizer.Beta2));
        Assert.Equal(0.01, align.Optimizer.WeightDecay);
        Assert.Equal(5, align.Schedule.WarmupSteps);
        Assert.Equal(100_000, align.Tokens);
        Assert.Equal(128 * 4, align.TokensPerStep);
        Assert.Equal((100_000 + 511) / 512, align.TotalSteps);

        var kd = r.Stages[1];
        Assert.Equal("all", kd.Trainable.Preset);
        Assert.Equal(1.0, kd.KlWeight);                 // distillation's default
        Assert.Equal(0.1, kd.CeWeight);
        Assert.Equal(2.0, kd.Temperature);
        Assert.Null(kd.GradClip);
        Assert.Equal(50, kd.TotalSteps);
        Assert.Equal(0.0, kd.Optimizer.WeightDecay);    // explicit default, not PyTorch's 0.01
        Assert.Equal(Precision.Auto, r.Precision);      // bf16 on CUDA, float32 on the CPU
        Assert.False(kd.ActivationCheckpointing);

        var chosen = Parse(Valid.Replace("seed: 7", "seed: 7\nprecision: bf16").Replace("    steps: 50\n", "    steps: 50\n    activation_checkpointing: true\n"));
        Assert.Equal(Precision.BFloat16, chosen.Precision);
        Assert.True(chosen.Stages[1].ActivationCheckpointing);
        Assert.False(chosen.Stages[0].ActivationCheckpointing);
    }

    [Fact]
    public void Unknown_field_is_named_with_its_path_and_line()
    {
        var e = Fails(Valid.Replace("    temperature: 2", "    temprature: 2"));
        Assert.Contains("'stages[1].temprature'", e.Message);
        Assert.Contains("not a known field", e.Message);
        Assert.Contains("line 27", e.Message);
        Assert.Contains("temperature", e.Message);      // the list of what is expected

        Assert.Contains("'stages[0].optimizer.learning_rate'", Fails(Valid.Replace("lr: 1e-3", "learning_rate: 1e-3")).Message);
        Assert.Contains("'colour'", Fails(Valid + "\ncolour: blue\n").Message);
    }

    [Fact]
    public void A_misspelt_field_gets_did_you_mean_before_the_whole_list_of_fields()
    {
        var e = Fails(Valid.Replace("    micro_batch: 4", "    micro_bach: 4"));
        Assert.Contains("line 23: field 'stages[0].micro_bach' is not a known field; did you mean 'micro_batch'? Expected one of: accumulation, ", e.Message);
        // the list is the guidance the CLI prints whole, and it names every field a stage takes
        Assert.StartsWith("; did you mean 'micro_batch'? Expected one of: ", e.Guidance);
        Assert.EndsWith(e.Guidance, e.Message);
        var listed = e.Guidance[(e.Guidance.IndexOf(": ", StringComparison.Ordinal) + 2)..].Split(", ");
        Assert.Equal(listed.Order(StringComparer.Ordinal), listed);
        Assert.Contains("micro_batch", listed);
        Assert.Contains("name", listed);
        Assert.Contains("trainable", listed);
        Assert.True(listed.Length >= 20, e.Guidance);

        // case alone, and a swap of neighbours, are typos too; a name nothing is close to gets the list alone
        Assert.Contains("did you mean 'micro_batch'?", Fails(Valid.Replace("    micro_batch: 4", "    Micro_Batch: 4")).Message);
        Assert.Contains("did you mean 'temperature'?", Fails(Valid.Replace("    temperature: 2", "    temperautre: 2")).Message);
        var far = Fails(Valid + "\ncolour: blue\n");
        Assert.DoesNotContain("did you mean", far.Message);
        Assert.Contains("'colour' is not a known field; expected one of: data, precision, seed, stages, student, teacher", far.Message);
        // a choice of value gets the same treatment
        Assert.Contains("'stages[1].objective' is 'distilation'; did you mean 'distillation'? Expected one of: ",
            Fails(Valid.Replace("objective: distillation", "objective: distilation")).Message);
    }

    [Fact]
    public void A_huge_unknown_key_is_quoted_cut_to_a_bound_while_the_list_stays_whole()
    {
        var key = new string('k', 1 << 20);
        // an explicit key (? …): a plain one may be at most 1024 characters in YAML
        var e = Fails(Valid.Replace("    micro_batch: 4\n", $"    ? {key}\n    : 4\n"));
        Assert.Contains("characters) …", e.Message);
        Assert.True(e.Message.Length < 2000, $"{e.Message.Length} characters");
        Assert.EndsWith(", trainable", e.Guidance);
        Assert.Contains("accumulation, ", e.Guidance);
    }

    [Fact]
    public void Negative_learning_rate_is_refused()
    {
        var e = Fails(Valid.Replace("lr: 1e-3", "lr: -1e-3"));
        Assert.Contains("'stages[0].optimizer.lr'", e.Message);
        Assert.Contains("-0.001", e.Message);
    }

    [Fact]
    public void Missing_teacher_is_refused()
    {
        var noTeacher = string.Join('\n', Valid.Split('\n').Where(l => !l.StartsWith("teacher") && !l.StartsWith("  llama2c") && !l.StartsWith("  tokenizer")));
        Assert.Contains("field 'teacher' is missing", Fails(noTeacher).Message);

        var missingFile = Fails(Valid.Replace(Shared.Stories260KBin, dir["nope.bin"]));
        Assert.Contains("'teacher.llama2c'", missingFile.Message);
        Assert.Contains("does not exist", missingFile.Message);
    }

    [Fact]
    public void Stage_out_of_order_is_refused()
    {
        var swapped = Valid.Replace("objective: attention_alignment", "objective: XX").Replace("objective: distillation", "objective: attention_alignment")
            .Replace("objective: XX", "objective: distillation").Replace("    trainable: comba\n", "").Replace("    temperature: 2\n    ce_weight: 0.1\n", "");
        var e = Fails(swapped);
        Assert.Contains("'stages[1].objective'", e.Message);
        Assert.Contains("attention_alignment after distillation", e.Message);
    }

    [Fact]
    public void Missing_data_file_is_refused()
    {
        var e = Fails(Valid.Replace(Shared.TinyStoriesTrain, dir["missing.txt"]));
        Assert.Contains("'data.train'", e.Message);
        Assert.Contains("missing.txt", e.Message);
        Assert.Contains("'data.validation'", Fails(Valid.Replace(Shared.TinyStoriesValid, dir["v.txt"])).Message);
    }

    [Theory]
    [InlineData("    steps: 50\n", "    steps: 50\n    tokens: 10\n", "give exactly one budget")]
    [InlineData("  - name: kd", "  - name: align", "already uses")]
    [InlineData("  - name: kd", "  - name: k/d", "'stages[1].name'")]
    [InlineData("    ce_weight: 0.1\n", "    ce_weight: 0.1\n    kl_weight: 0\n    micro_batch: 0\n", "'stages[1].micro_batch' is 0")]
    [InlineData("    trainable: comba\n", "    trainable: all\n", "attention-side")]
    [InlineData("    trainable: comba\n", "    trainable: comba\n    kl_weight: 1\n", "'stages[0].kl_weight' applies to logits")]
    [InlineData("    ce_weight: 0.1\n", "    ce_weight: 0\n    kl_weight: 0\n", "nothing to minimise")]
    [InlineData("betas: [0.9, 0.99]", "betas: [0.9, 1.5]", "'stages[0].optimizer.betas'")]
    [InlineData("betas: [0.9, 0.99]", "betas: [0.9, x]", "line 19: field 'stages[0].optimizer.betas[1]' is 'x'; expected a number")]
    [InlineData("    micro_batch: 4\n", "    micro_batch: [4]\n", "line 23: field 'stages[0].micro_batch' must be a single value")]
    [InlineData("    micro_batch: 4\n", "    micro_batch: 4\n    micro_batch: 5\n", "line 24: not valid YAML (the key 'micro_batch' is given twice)")]
    [InlineData("warmup_steps: 5", "warmup_steps: 500", "warms up for 500 steps")]
    [InlineData("min_lr: 1e-5", "min_lr: 1e-2", "'stages[0].schedule.min_lr'")]
    [InlineData("kind: cosine", "kind: linear", "expected one of: cosine, constant")]
    [InlineData("sequence_length: 128", "sequence_length: 4096", "beyond the teacher's context of 512")]
    [InlineData("chunk_size: 16", "chunk_size: 17", "chunk_size")]
    [InlineData("tokens: 100k", "tokens: lots", "expected a whole number")]
    [InlineData("seed: 7", "seed: 7\nseed: 8", "not valid YAML")]
    [InlineData("  add_eos: false", "  add_eos: !!int 5", "'data.add_eos' is '5'; expected true or false")]    // a tag does not change the field's type
    [InlineData("seed: 7", "seed: 7\nprecision: fp16", "'precision' is 'fp16'; expected one of: auto, bf16, float32")]
    [InlineData("    micro_batch: 4\n", "    micro_batch: 4\n    activation_checkpointing: sometimes\n", "'stages[0].activation_checkpointing'")]
    public void BadFieldsAreNamed(string find, string replace, string expected)
    {
        Assert.Contains(find, Valid);
        Assert.Contains(expected, Fails(Valid.Replace(find, replace)).Message);
    }

    [Theory]
    [InlineData("2000", 2000)]
    [InlineData("2_000", 2000)]
    [InlineData("2k", 2000)]
    [InlineData("2K", 2000)]
    [InlineData("1.5m", 1_500_000)]
    [InlineData("1g", 1_000_000_000)]
    [InlineData("1e6", 1_000_000)]
    [InlineData(" 3k ", 3000)]
    public void Counts_read_the_same_in_recipes_and_on_the_command_line(string text, long expected)
    {
        Assert.Equal(expected, WholeNumber.Parse(text, "--tokens"));
        // the recipe reads the same text to the same number
        Assert.Equal(expected, Parse(Valid.Replace("max_tokens: 4096", $"max_tokens: {text.Trim()}")).Data.Validation!.MaxTokens);
    }

    [Theory]
    [InlineData("lots")]
    [InlineData("2x")]
    [InlineData("1.5")]
    [InlineData("k")]
    [InlineData("")]
    [InlineData("1e30")]
    public void A_count_that_is_not_a_whole_number_is_refused_naming_the_option(string text)
    {
        var e = Assert.Throws<InvalidInputException>(() => WholeNumber.Parse(text, "--tokens"));
        Assert.Equal($"--tokens '{text}': expected a whole number such as 2000, 2_000, 2k, 1.5m or 1e6", e.Message);
    }

    [Fact]
    public void An_empty_or_null_value_takes_the_default()
    {
        var r = Parse(Valid.Replace("    micro_batch: 4\n", "    micro_batch: ~\n    accumulation:\n").Replace("seed: 7", "seed: null"));
        var defaults = new StageRecipe { Name = "", Objective = Objective.AttentionAlignment, Trainable = TrainableSelection.Of("all") };
        Assert.Equal((defaults.MicroBatch, defaults.Accumulation), (r.Stages[0].MicroBatch, r.Stages[0].Accumulation));
        Assert.Equal(new Recipe { SourcePath = "", Teacher = new(), Student = new(), Data = r.Data, Stages = [] }.Seed, r.Seed);
    }

    [Fact]
    public void Paths_are_relative_to_the_recipe_and_may_use_environment_variables()
    {
        File.WriteAllText(dir["train.jsonl"], "{\"text\": \"a\"}\n");
        var yaml = Valid.Replace(Shared.TinyStoriesTrain, "${COMBADISTILL_TEST_UNSET_VARIABLE:-.}/train.jsonl");
        var r = Parse(yaml);
        Assert.Equal(dir["train.jsonl"], r.Data.Train.Path);
        Assert.Equal(DataFormat.Jsonl, r.Data.Train.Format);
        Assert.Contains("is not set", Fails(Valid.Replace(Shared.TinyStoriesTrain, "${COMBADISTILL_TEST_UNSET_VARIABLE}/train.jsonl")).Message);
    }

    [Fact]
    public void From_scratch_needs_a_converted_student()
    {
        Assert.True(Parse(Valid.Replace("    chunk_size: 16\n", "    chunk_size: 16\n  from_scratch: true\n")).Student.FromScratch);
        Assert.False(Parse(Valid).Student.FromScratch);
        File.WriteAllText(dir["config.json"], "{}");
        var withPath = Valid.Replace("  convert:\n    short_conv: 4\n    chunk_size: 16\n", $"  path: {dir.Path}\n  from_scratch: true\n");
        Assert.Contains("'student.from_scratch'", Fails(withPath).Message);
    }

    [Fact]
    public void Trainable_patterns_are_a_list()
    {
        var r = Parse(Valid.Replace("    trainable: comba\n", "    trainable: [\"model.layers.*.self_attn.a_proj.*\", \"model.layers.*.self_attn.d\"]\n"));
        Assert.Equal(["model.layers.*.self_attn.a_proj.*", "model.layers.*.self_attn.d"], r.Stages[0].Trainable.Patterns);
        Assert.Contains("only name self_attn", Fails(Valid.Replace("    trainable: comba\n", "    trainable: [\"lm_head.*\"]\n")).Message);
    }
}
