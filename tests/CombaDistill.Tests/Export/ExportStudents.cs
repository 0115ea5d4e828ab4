using System.Diagnostics;
using CombaDistill.Conversion;
using CombaDistill.Distillation;
using CombaDistill.IO;
using CombaDistill.Modeling;
using CombaDistill.Modeling.Comba;
using CombaDistill.Tests.Conversion;
using CombaDistill.Tests.Modeling;
using CombaDistill.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Export;

/// <summary>
/// The students the export tests run outside CombaDistill, each converted from a teacher and then given random gates,
/// convolutions, corrections and output norms (a fresh conversion has identity convolutions and near-constant gates,
/// which would hide mistakes in those parts):
/// <list type="bullet">
/// <item>pure: Llama 3 GQA (6 heads over 2), every layer Comba, rotary on q/k, short convolutions, output norm;</item>
/// <item>hybrid: Qwen2 (q/k/v biases, tied embeddings), layer 1 keeps softmax attention;</item>
/// <item>taylor: stories260K with the recipe's options: Taylor features, normalised read-out, short convolutions, rotary.</item>
/// </list>
/// </summary>
static class ExportStudents
{
    public static readonly string[] Names = ["pure", "hybrid", "taylor"];

    /// <summary>Writes student <paramref name="name"/> (a normal student folder, float32) into <paramref name="folder"/>.</summary>
    public static string Write(string name, TempDir temp, string folder)
    {
        string teacher;
        ConversionOptions options;
        switch (name)
        {
            case "pure":
                teacher = TeacherFolders.WriteRandom(temp[name + "-teacher"], TinyModels.Llama3Gqa with { NumHiddenLayers = 3 }, seed: 41);
                options = new ConversionOptions { Comba = ConversionOptions.DefaultComba with { Rotary = "teacher", OutputNorm = true, ChunkSize = 16 } };
                break;
            case "hybrid":
                teacher = TeacherFolders.WriteRandom(temp[name + "-teacher"], TinyModels.Qwen2Tied with { NumHiddenLayers = 3 }, seed: 42);
                options = new ConversionOptions { KeepAttention = "1", Comba = ConversionOptions.DefaultComba with { ChunkSize = 16 } };
                break;
            case "taylor":
                teacher = TeacherFolders.ImportStories260K(temp[name + "-teacher"]);
                options = new ConversionOptions
                {
                    Comba = ConversionOptions.DefaultComba with { Rotary = "teacher", ShortConv = 4, ChunkSize = 16, FeatureMap = "taylor", NormalizeReadout = true },
                };
                break;
            default:
                throw new ArgumentException(name);
        }
        var converted = temp[name + "-converted"];
        CombaConverter.Convert(teacher, converted, options, cancellationToken: TestContext.Current.CancellationToken);
        using var student = CombaForCausalLM.FromPretrained(converted, ScalarType.Float32);
        var g = new Generator(1000 + (ulong)Array.IndexOf(Names, name));
        using (no_grad())
        {
            foreach (var (key, p) in student.named_parameters())
            {
                if (key.Contains("a_proj") || key.Contains("b_proj") || key.EndsWith(".d") || key.EndsWith("lambda_logit") || key.Contains("o_norm"))
                    p.add_(0.3 * randn(p.shape, generator: g));
                else if (key.Contains("_conv."))
                    p.add_(0.4 * randn(p.shape, generator: g));
            }
        }
        StudentFolder.Save(student, folder, tokenizerFolder: teacher);
        return folder;
    }

    /// <summary>A python3 that imports torch: $COMBADISTILL_PYTHON, Debian's /usr/bin/python3, or the PATH's python3; null if none does.</summary>
    public static string? PythonWithTorch()
    {
        var candidates = new[] { Environment.GetEnvironmentVariable("COMBADISTILL_PYTHON"), "/usr/bin/python3", "python3" };
        foreach (var python in candidates.Where(c => !string.IsNullOrEmpty(c)).Distinct())
        {
            try
            {
                var (code, _, _) = Run(python!, ["-c", "import torch"]);
                if (code == 0) return python;
            }
            catch (System.ComponentModel.Win32Exception) { }   // not installed
        }
        return null;
    }

    /// <summary>
    /// The interpreter for the plain-PyTorch test. Without one the test is skipped on a workstation, but fails in CI
    /// (the environment variable CI set to anything but empty, 0 or false), where .ci/run installs python3-torch.
    /// </summary>
    public static string RequirePython()
    {
        if (PythonWithTorch() is { } python) return python;
        var ci = Environment.GetEnvironmentVariable("CI");
        const string why = "no python3 with torch (Debian: apt-get install python3-torch; or set COMBADISTILL_PYTHON)";
        if (!string.IsNullOrEmpty(ci) && ci != "0" && !ci.Equals("false", StringComparison.OrdinalIgnoreCase))
            Assert.Fail($"{why}; CI is set, so this is a failure: .ci/run should have installed it");
        Assert.Skip(why);
        return "";
    }

    public static (int Code, string Stdout, string Stderr) Run(string program, IEnumerable<string> args)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) start.ArgumentList.Add(a);
        start.Environment["OMP_NUM_THREADS"] = "1";
        using var process = Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        var stdout = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, stdout, stderr.Result);
    }

    /// <summary>Our greedy continuation (end-of-sequence ids do not stop it), prompt included.</summary>
    public static long[] Greedy(ICausalLM model, long[] prompt, int tokens) =>
        [.. prompt, .. Generation.Generate(model, prompt.Select(i => (int)i).ToArray(), new GenerationOptions(tokens, 0, StopAtEos: false)).Select(i => (long)i)];

    /// <summary>Mean cross-entropy of position t's logits against label t + 1, labels of −100 left out: what transformers' loss is.</summary>
    public static double CausalLoss(Tensor logits, Tensor labels)
    {
        using var scope = NewDisposeScope();
        var (b, t, v) = (logits.shape[0], logits.shape[1], logits.shape[2]);
        var next = labels.narrow(1, 1, t - 1).reshape(-1);
        var scored = logits.narrow(1, 0, t - 1).reshape(-1, v).to(ScalarType.Float64);
        return nn.functional.cross_entropy(scored, next, ignore_index: -100).item<double>();
    }

    /// <summary>Reads <paramref name="name"/> from a safetensors file the check script wrote.</summary>
    public static Tensor Read(string file, string name)
    {
        using var f = SafeTensorsFile.Open(file);
        return f.Read(name);
    }
}
