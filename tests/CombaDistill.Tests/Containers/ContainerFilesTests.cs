using System.Diagnostics;
using System.IO.Enumeration;
using System.Text.RegularExpressions;
using CombaDistill.Runtime;
using CombaDistill.Tests.Support;
using YamlDotNet.RepresentationModel;

namespace CombaDistill.Tests.Containers;

/// <summary>
/// docker-compose.yml and docker/Dockerfile, checked without a Docker engine: Debian's docker-compose validates the
/// compose file, and both files are read for what they promise (services, GPU reservations, shared folders, the
/// published CLI as the entry point) against the repository they build from.
/// </summary>
public sealed class ContainerFilesTests : IDisposable
{
    static readonly string ComposeFile = Path.Combine(Shared.RepoRoot, "docker-compose.yml");
    static readonly string Dockerfile = Path.Combine(Shared.RepoRoot, "docker", "Dockerfile");
    static readonly string[] Jobs = ["convert", "distill", "eval"];

    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    static string? DockerCompose() =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, "docker-compose")).FirstOrDefault(File.Exists);

    static (int Code, string Stdout, string Stderr) Run(string tool, string workingDirectory, params string[] args)
    {
        var start = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = workingDirectory };
        foreach (var a in args) start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        var stdout = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, stdout, stderr.Result);
    }

    [Fact]
    public void Docker_compose_validates_the_compose_file()
    {
        var tool = DockerCompose();
        Assert.SkipWhen(tool is null, "docker-compose is not installed (Debian: apt-get install docker-compose; .ci/run installs it)");
        var (code, stdout, stderr) = Run(tool!, Shared.RepoRoot, "-f", "docker-compose.yml", "config", "-q");
        Assert.True(code == 0, $"docker-compose config: {stderr}");
        Assert.Equal("", stdout);

        // the validator does check: one misspelt key makes the same file invalid
        var broken = dir["docker-compose.yml"];
        var text = File.ReadAllText(ComposeFile);
        Assert.Contains("    stop_signal: SIGINT\n", text);
        File.WriteAllText(broken, text.Replace("    stop_signal: SIGINT\n", "    stop_signall: SIGINT\n"));
        (code, _, stderr) = Run(tool!, dir.Path, "-f", "docker-compose.yml", "config", "-q");
        Assert.NotEqual(0, code);
        Assert.Contains("stop_signall", stderr);

        // what Compose itself makes of the anchors: every job reserves NVIDIA GPUs and mounts the shared folders
        (code, stdout, stderr) = Run(tool!, Shared.RepoRoot, "-f", "docker-compose.yml", "config");
        Assert.True(code == 0, stderr);
        CheckServices(Load(stdout));
    }

    [Fact]
    public void The_compose_file_defines_GPU_jobs_on_shared_folders_and_TensorBoard()
    {
        var root = Load(File.ReadAllText(ComposeFile));
        CheckServices(root);
        var services = Map(root, "services");
        foreach (var job in Jobs)
        {
            var service = Map(services, job);
            var build = Map(service, "build");
            Assert.Equal(".", Scalar(build, "context"));
            Assert.True(File.Exists(Path.Combine(Shared.RepoRoot, Scalar(build, "dockerfile"))), $"{job}: the build's dockerfile is missing");
        }

        // the default commands name files that exist: the recipe, the evaluation text, and a CLI command each
        var distill = Strings(Map(services, "distill")["command"]);
        Assert.Equal("distill", distill[0]);
        Assert.True(File.Exists(Path.Combine(Shared.RepoRoot, "recipes", Path.GetFileName(distill[distill.IndexOf("--recipe") + 1]))));
        var eval = Strings(Map(services, "eval")["command"]);
        Assert.Equal("eval", eval[0]);
        var data = eval[eval.IndexOf("--data") + 1];
        Assert.StartsWith("/shared/", data);
        Assert.True(File.Exists(Path.Combine(Shared.Root, data["/shared/".Length..])), $"{data} is not in the shared fixtures");
        Assert.Equal("convert", Strings(Map(services, "convert")["command"])[0]);

        // the bundled recipes find the fixtures in the container through COMBADISTILL_SHARED
        Assert.Contains("${COMBADISTILL_SHARED:-", File.ReadAllText(Path.Combine(Shared.RepoRoot, "recipes", "stories260k.yaml")));
        Assert.Equal("/shared", Scalar(Map(Map(services, "distill"), "environment"), "COMBADISTILL_SHARED"));
    }

    /// <summary>The service checks both the raw file and Compose's resolved output must pass.</summary>
    static void CheckServices(YamlMappingNode root)
    {
        var services = Map(root, "services");
        Assert.Equal(["convert", "distill", "eval", "tensorboard"], services.Children.Keys.Select(k => ((YamlScalarNode)k).Value!).Order().ToArray());
        foreach (var job in Jobs)
        {
            var service = Map(services, job);
            Assert.Equal("combadistill:gpu", Scalar(service, "image"));
            var devices = (YamlSequenceNode)Map(Map(Map(service, "deploy"), "resources"), "reservations")["devices"];
            var device = (YamlMappingNode)Assert.Single(devices.Children);
            Assert.Equal("nvidia", Scalar(device, "driver"));
            Assert.Contains("gpu", Strings(device["capabilities"]));
            var targets = Mounts(service).Select(m => m.Target).ToArray();
            Assert.Contains("/models", targets);
            Assert.Contains("/runs", targets);
        }
        // one models/runs pair shared by all jobs (the same host folders), and TensorBoard reads the runs
        string HostOf(string job, string target) => Mounts(Map(services, job)).Single(m => m.Target == target).Host;
        var runsHost = Assert.Single(Jobs.Select(j => HostOf(j, "/runs")).Distinct());
        Assert.Single(Jobs.Select(j => HostOf(j, "/models")).Distinct());
        var tensorboard = Map(services, "tensorboard");
        Assert.Equal((runsHost, "/runs", "ro"), Assert.Single(Mounts(tensorboard)));
        var command = Strings(tensorboard["command"]);
        Assert.Equal("/runs", command[command.IndexOf("--logdir") + 1]);
        Assert.Equal("/opt/torch/bin/tensorboard", Assert.Single(Strings(tensorboard["entrypoint"])));
    }

    [Fact]
    public void The_Dockerfile_publishes_the_CLI_and_enters_it()
    {
        var instructions = DockerInstructions(File.ReadAllText(Dockerfile));
        string[] All(string keyword) => instructions.Where(i => i.Keyword == keyword).Select(i => i.Arguments).ToArray();

        // Ubuntu 24.04 (noble) images of the .NET version the projects target
        Assert.Equal("DOTNET_VERSION=10.0", Assert.Single(All("ARG"), a => a.StartsWith("DOTNET_VERSION")));
        Assert.Contains("<TargetFramework>net10.0</TargetFramework>", File.ReadAllText(Path.Combine(Shared.RepoRoot, "Directory.Build.props")));
        Assert.Equal(["mcr.microsoft.com/dotnet/sdk:${DOTNET_VERSION}-noble AS build", "mcr.microsoft.com/dotnet/runtime:${DOTNET_VERSION}-noble"], All("FROM"));

        // every file the build copies is in the repository and not excluded from the build context
        var ignored = File.ReadAllLines(Path.Combine(Shared.RepoRoot, ".dockerignore")).Where(l => l.Length > 0 && !l.StartsWith('#')).ToArray();
        foreach (var copy in All("COPY").Where(c => !c.StartsWith("--from")))
        {
            var parts = copy.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            foreach (var source in parts[..^1])
            {
                var path = Path.Combine(Shared.RepoRoot, source);
                Assert.True(File.Exists(path) || Directory.Exists(path), $"COPY {source}: not in the repository");
                Assert.DoesNotContain(ignored, i => i.TrimEnd('/') == source.TrimEnd('/') || i.TrimEnd('/') == source.Split('/')[0]);
            }
        }

        // the published project is the CLI, and the entry point runs its assembly from where the publish output is copied
        var publish = Regex.Match(string.Join("\n", All("RUN")), @"dotnet publish (\S+\.csproj)(?:(?!&&).)*? -o (\S+)");
        Assert.True(publish.Success, "no dotnet publish of a .csproj");
        var project = Path.Combine(Shared.RepoRoot, publish.Groups[1].Value);
        Assert.True(File.Exists(project), $"{publish.Groups[1].Value} does not exist");
        var assembly = Regex.Match(File.ReadAllText(project), "<AssemblyName>(.+)</AssemblyName>").Groups[1].Value;
        Assert.Equal("CombaDistill.Cli", assembly);
        Assert.Contains($"<ToolCommandName>combadistill</ToolCommandName>", File.ReadAllText(project));
        var installed = Assert.Single(All("COPY"), c => c.StartsWith("--from=build ")).Split(' ');
        Assert.Equal(publish.Groups[2].Value, installed[1]);
        Assert.Equal("[\"combadistill\"]", Assert.Single(All("ENTRYPOINT")));
        Assert.Equal("[\"--help\"]", Assert.Single(All("CMD")));
        Assert.Contains("docker/combadistill /usr/local/bin/combadistill", All("COPY"));
        var wrapper = Path.Combine(Shared.RepoRoot, "docker", "combadistill");
        if (!OperatingSystem.IsWindows())
            Assert.True((File.GetUnixFileMode(wrapper) & UnixFileMode.UserExecute) != 0, "docker/combadistill is not executable");
        Assert.Contains($"exec dotnet {installed[2]}/{assembly}.dll \"$@\"", File.ReadAllText(wrapper));

        // PyTorch's libraries come in through the variable the runtime reads, from the virtual environment torch is installed in
        var libtorch = Assert.Single(All("ENV"), e => e.StartsWith(TorchRuntime.LibTorchEnvironmentVariable + "="));
        Assert.Matches(@"^COMBADISTILL_LIBTORCH=/opt/torch/lib/python3\.12/site-packages/torch/lib$", libtorch);
        var runs = string.Join("\n", All("RUN"));
        Assert.Contains("python3 -m venv /opt/torch", runs);
        Assert.Contains("/opt/torch/bin/pip install --no-cache-dir \"torch==${TORCH_VERSION}\"", runs);
        Assert.Contains("/opt/torch/bin/pip install --no-cache-dir tensorboard", runs);

        // the publish step's clean-up keeps TorchSharp's own native library and drops the CPU libtorch, as on this build's output
        var patterns = Regex.Matches(runs, @"-name '([^']+)'").Select(m => m.Groups[1].Value).ToArray();
        var native = Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native");
        var files = Directory.GetFiles(native).Select(Path.GetFileName).ToArray();
        bool Removed(string file) => patterns.Any(p => FileSystemName.MatchesSimpleExpression(p, file));
        Assert.Contains("libLibTorchSharp.so", files);
        Assert.False(Removed("libLibTorchSharp.so"));
        Assert.Contains("test -f /app/runtimes/linux-x64/native/libLibTorchSharp.so", runs);
        Assert.All(files.Where(f => f!.StartsWith("libtorch") || f.StartsWith("libc10")), f => Assert.True(Removed(f!), $"{f} would stay in the image"));
    }

    [Fact]
    public void The_entry_points_default_command_prints_the_CLI_help()
    {
        // CMD ["--help"] after ENTRYPOINT ["combadistill"]: the published CLI's help, which needs no native library
        var (code, stdout, stderr) = CliProcess.Run("--help");
        Assert.True(code == 0, stderr);
        foreach (var command in new[] { "convert", "distill", "eval", "inspect" }) Assert.Contains(command, stdout);
    }

    /// <summary>Dockerfile instructions with continuation lines joined and comment lines dropped.</summary>
    static List<(string Keyword, string Arguments)> DockerInstructions(string text)
    {
        var result = new List<(string, string)>();
        var current = "";
        foreach (var raw in text.Split('\n'))
        {
            var line = raw.TrimEnd();
            if (line.TrimStart().StartsWith('#')) continue;
            current += current.Length > 0 ? " " + line.Trim() : line.Trim();
            if (current.EndsWith('\\')) { current = current[..^1].TrimEnd(); continue; }
            if (current.Length > 0)
            {
                var space = current.IndexOf(' ');
                result.Add((current[..space].ToUpperInvariant(), current[(space + 1)..].Trim()));
            }
            current = "";
        }
        return result;
    }

    /// <summary>A service's HOST:TARGET[:MODE] mounts; HOST may be a ${VARIABLE:-default}, whose colon is not a separator.</summary>
    static IEnumerable<(string Host, string Target, string Mode)> Mounts(YamlMappingNode service) =>
        Strings(service["volumes"]).Select(v => Regex.Match(v, @"^(?<host>\$\{[^}]*\}|[^:]+):(?<target>[^:]+)(:(?<mode>\w+))?$"))
            .Select(m => m.Success ? (m.Groups["host"].Value, m.Groups["target"].Value, m.Groups["mode"].Success ? m.Groups["mode"].Value : "rw")
                : throw new Xunit.Sdk.XunitException($"'{m.Value}' is not a HOST:TARGET mount"));

    static YamlMappingNode Load(string yaml)
    {
        var stream = new YamlStream();
        stream.Load(new StringReader(yaml));
        return (YamlMappingNode)stream.Documents[0].RootNode;
    }

    static YamlMappingNode Map(YamlMappingNode node, string key) =>
        node.Children.TryGetValue(new YamlScalarNode(key), out var child) ? (YamlMappingNode)child : throw new Xunit.Sdk.XunitException($"no '{key}'");

    static string Scalar(YamlMappingNode node, string key) => ((YamlScalarNode)node[key]).Value!;

    static List<string> Strings(YamlNode node) => ((YamlSequenceNode)node).Children.Select(c => ((YamlScalarNode)c).Value!).ToList();
}
