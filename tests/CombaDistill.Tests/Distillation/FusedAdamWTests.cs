using CombaDistill;
using CombaDistill.Distillation;
using CombaDistill.Tests.Support;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Distillation;

/// <summary>
/// <see cref="FusedAdamW"/> against TorchSharp's own AdamW (a second implementation of the same update), step for
/// step: two groups (decayed and not), a changing learning rate, a parameter whose size is not a multiple of four
/// (the kernel's scalar form), one that is (the float4 form), and one without a gradient (left alone).
/// </summary>
public sealed class FusedAdamWTests
{
    static Parameter[] Parameters(Device device)
    {
        var g = new Generator(11);
        return
        [
            new Parameter(randn([64, 96], generator: g).to(device)),     // 6144 elements: float4
            new Parameter(randn([37], generator: g).to(device)),         // scalar form
            new Parameter(randn([5, 3], generator: g).to(device)),       // no decay
            new Parameter(randn([8], generator: g).to(device)),          // never gets a gradient
        ];
    }

    static List<AdamW.ParamGroup> Groups(Parameter[] p, double eps = 1e-8) =>
    [
        new AdamW.ParamGroup([p[0], p[1], p[3]], new AdamW.Options { LearningRate = 1e-2, beta1 = 0.9, beta2 = 0.95, eps = eps, weight_decay = 0.1 }),
        new AdamW.ParamGroup([p[2]], new AdamW.Options { LearningRate = 1e-2, beta1 = 0.9, beta2 = 0.95, eps = eps, weight_decay = 0 }),
    ];

    /// <summary>Runs <paramref name="steps"/> updates with the same gradients into both optimizers; returns the largest relative difference of any parameter.</summary>
    static double Compare(Device device, OptimizerHelper fused, Parameter[] a, OptimizerHelper reference, Parameter[] b, int steps, int seed)
    {
        var g = new Generator((ulong)seed);
        var worst = 0.0;
        for (var step = 0; step < steps; step++)
        {
            foreach (var (opt, lr) in new[] { (fused, 1e-2 / (step + 1)), (reference, 1e-2 / (step + 1)) })
                foreach (var group in opt.ParamGroups) group.LearningRate = lr;
            for (var i = 0; i < 3; i++)
            {
                var grad = (randn(a[i].shape, generator: g) * (i + 1)).to(device);
                a[i].grad = grad.clone();
                b[i].grad = grad.clone();
            }
            fused.step();
            reference.step();
            for (var i = 0; i < a.Length; i++)
            {
                var difference = (a[i] - b[i]).abs().max().item<float>() / Math.Max(1e-12, b[i].abs().max().item<float>());
                worst = Math.Max(worst, difference);
            }
        }
        return worst;
    }

    [Fact]
    public void On_the_CPU_it_is_TorchSharps_AdamW_bit_for_bit()
    {
        var (a, b) = (Parameters(CPU), Parameters(CPU));
        var fused = new FusedAdamW(Groups(a), 1e-2, 0.9, 0.95, 1e-8);
        var reference = optim.AdamW(Groups(b), 1e-2, 0.9, 0.95, 1e-8, weight_decay: 0);
        Assert.Equal(0.0, Compare(CPU, fused, a, reference, b, steps: 4, seed: 3));
        AssertCheckpointsInterchange(CPU, fused, a, reference, b);
        Assert.Equal(0, fused.FusedSteps);
    }

    /// <summary>
    /// Each optimizer's state, saved as a checkpoint saves it, resumes the other on the same trajectory; the file
    /// TorchSharp's own writer makes (the checkpoints of runs before the fused optimizer) resumes the fused one.
    /// </summary>
    static void AssertCheckpointsInterchange(Device device, FusedAdamW fused, Parameter[] a, OptimizerHelper reference, Parameter[] b)
    {
        using var dir = new TempDir();
        OptimizerStateFile.Save(fused, dir["fused.bin"]);
        reference.save_state_dict(dir["torchsharp.bin"]);
        var (c, d) = (Parameters(device), Parameters(device));
        using (no_grad())
            for (var i = 0; i < a.Length; i++) { c[i].copy_(a[i]); d[i].copy_(b[i]); }
        // read by TorchSharp's own reader: the file is TorchSharp's format
        var resumedReference = optim.AdamW(Groups(c), 1e-2, 0.9, 0.95, 1e-8, weight_decay: 0);
        resumedReference.load_state_dict(dir["fused.bin"]);
        var resumedFused = new FusedAdamW(Groups(d), 1e-2, 0.9, 0.95, 1e-8);
        OptimizerStateFile.Load(resumedFused, dir["torchsharp.bin"]);
        // each saved optimizer goes on; the one resumed from its file must go the same way
        var tolerance = device.type == DeviceType.CPU ? 0 : 1e-6;
        Assert.True(Compare(device, fused, a, resumedReference, c, steps: 3, seed: 9) <= tolerance, "TorchSharp's AdamW resumed from the fused optimizer's file");
        var before = resumedFused.FusedSteps;
        Assert.True(Compare(device, resumedFused, d, reference, b, steps: 3, seed: 9) <= tolerance, "the fused optimizer resumed from TorchSharp's file");
        if (device.type == DeviceType.CUDA) Assert.True(resumedFused.FusedSteps - before >= 2, $"the kernel took {resumedFused.FusedSteps - before} of the 3 resumed steps");
    }

    /// <summary>
    /// A clip factor handed to the fused optimizer and its bf16 working copies, against clip_grad_norm_'s in-place
    /// scaling, TorchSharp's AdamW and a copy_ into bf16: the same parameters, and working copies equal to the
    /// parameters rounded (on CUDA by the kernel, on the CPU by the base class's step, which leaves the copies alone).
    /// </summary>
    [Theory]
    [InlineData("cpu")]
    [InlineData("cuda")]
    public void A_clip_factor_and_working_copies_match_clipping_in_place_and_copying(string deviceName)
    {
        if (deviceName == "cuda") Gpu.Require();
        var device = deviceName == "cuda" ? CUDA : CPU;
        var (a, b) = (Parameters(device), Parameters(device));
        // an ε near the clipped gradients' size, so the update depends on the factor (AdamW is otherwise nearly scale-free)
        var fused = new FusedAdamW(Groups(a, eps: 1e-2), 1e-2, 0.9, 0.95, 1e-2);
        var reference = optim.AdamW(Groups(b, eps: 1e-2), 1e-2, 0.9, 0.95, 1e-2, weight_decay: 0);
        var working = a.Select(p => p.detach().to(ScalarType.BFloat16)).ToArray();
        fused.SetWorkingCopies(a.Zip(working));
        var g = new Generator(21);
        for (var step = 0; step < 4; step++)
        {
            fused.zero_grad();
            reference.zero_grad();
            for (var i = 0; i < 3; i++)
            {
                var grad = (randn(a[i].shape, generator: g) * 3).to(device);
                a[i].grad = grad.clone();
                b[i].grad = grad.clone();
            }
            var norm = nn.utils.clip_grad_norm_(b, 1.0);   // in place on b's gradients
            Assert.True(norm > 1, "the test's gradients are meant to be clipped");
            fused.ScaleGradients(a, 1.0 / (norm + 1e-6));
            var copiesBefore = working.Select(w => w.clone()).ToArray();
            fused.step();
            reference.step();
            if (!fused.PublishedLastStep)
            {
                // the base class's step leaves the copies alone, and says so: the caller publishes
                for (var i = 0; i < a.Length; i++)
                    Assert.True(working[i].to(ScalarType.Float32).equal(copiesBefore[i].to(ScalarType.Float32)).all().item<bool>(), $"step {step}: copy {i} changed");
                using (no_grad())
                    for (var i = 0; i < a.Length; i++) working[i].copy_(a[i]);
            }
            for (var i = 0; i < a.Length; i++)
            {
                var relative = (a[i] - b[i]).abs().max().item<float>() / b[i].abs().max().item<float>();
                Assert.True(relative <= (device.type == DeviceType.CPU ? 1e-7 : 1e-6), $"step {step}, parameter {i}: {relative}");
                Assert.True((working[i].to(ScalarType.Float32) - a[i].to(ScalarType.BFloat16).to(ScalarType.Float32)).abs().max().item<float>() == 0, $"step {step}, parameter {i}: the working copy is not the parameter rounded");
            }
        }
        Assert.Equal(device.type == DeviceType.CUDA, fused.PublishedLastStep);
    }

    [Fact]
    public void A_damaged_or_foreign_optimizer_file_is_refused_with_its_path()
    {
        var p = Parameters(CPU);
        var optimizer = new FusedAdamW(Groups(p), 1e-2, 0.9, 0.95, 1e-8);
        for (var i = 0; i < 3; i++) p[i].grad = ones_like(p[i]);
        optimizer.step();
        using var dir = new TempDir();
        var path = dir["optimizer.bin"];
        OptimizerStateFile.Save(optimizer, path);
        var bytes = File.ReadAllBytes(path);

        File.WriteAllBytes(dir["cut.bin"], bytes[..(bytes.Length / 2)]);
        var cut = Assert.Throws<InvalidInputException>(() => OptimizerStateFile.Load(new FusedAdamW(Groups(Parameters(CPU)), 1e-2, 0.9, 0.95, 1e-8), dir["cut.bin"]));
        Assert.Contains("cut.bin", cut.Message);
        Assert.Contains("not a complete optimizer state", cut.Message);

        var sgd = optim.SGD(Parameters(CPU), 0.1);
        var foreign = Assert.Throws<InvalidInputException>(() => OptimizerStateFile.Load(sgd, path));
        Assert.Contains("'AdamW' optimizer; this stage uses SGD", foreign.Message);

        var fewer = new FusedAdamW([Groups(Parameters(CPU))[0]], 1e-2, 0.9, 0.95, 1e-8);
        var mismatch = Assert.Throws<InvalidInputException>(() => OptimizerStateFile.Load(fewer, path));
        Assert.Contains("holds 2 parameter group(s)", mismatch.Message);
    }

    [Fact]
    public void On_CUDA_the_kernel_matches_TorchSharps_AdamW_and_shares_its_checkpoint_format()
    {
        Gpu.Require();
        var (a, b) = (Parameters(CUDA), Parameters(CUDA));
        var fused = new FusedAdamW(Groups(a), 1e-2, 0.9, 0.95, 1e-8);
        var reference = optim.AdamW(Groups(b), 1e-2, 0.9, 0.95, 1e-8, weight_decay: 0);
        Assert.True(Compare(CUDA, fused, a, reference, b, steps: 6, seed: 5) < 1e-6);
        Assert.True(fused.FusedSteps >= 5, $"the kernel ran {fused.FusedSteps} of 6 steps");
        Assert.True((a[3] - Parameters(CUDA)[3]).abs().max().item<float>() == 0, "a parameter without a gradient moved");

        AssertCheckpointsInterchange(CUDA, fused, a, reference, b);
        Assert.True(fused.FusedSteps >= 8, $"the kernel ran {fused.FusedSteps} of 9 steps");
    }
}
