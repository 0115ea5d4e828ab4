using System.CommandLine;
using CombaDistill.IO;
using CombaDistill.Runtime;
using CombaDistill.Runtime.Cuda;
using Spectre.Console;

namespace CombaDistill.Cli;

/// <summary>Options every command shares, and the one place errors become exit codes.</summary>
static class CliCommon
{
    public static readonly Option<string> DeviceOption = new("--device")
    {
        Description = "auto | cpu | cuda | cuda:N",
        DefaultValueFactory = _ => "auto",
        Recursive = true,
    };

    public static readonly Option<string?> LibTorchOption = new("--libtorch")
    {
        Description = $"folder of an installed PyTorch's libraries (torch/lib) to use for CUDA; overrides {TorchRuntime.LibTorchEnvironmentVariable}",
        Recursive = true,
    };

    /// <summary>Diagnostics and progress go to standard error, so standard output carries only results.</summary>
    /// <summary>--threads, for every command that runs a model; apply it with <see cref="SetThreads"/>.</summary>
    public static Option<int?> ThreadsOption() =>
        new("--threads") { Description = "CPU threads for libtorch (default: one per core); 1 is often fastest for a small model or on a busy machine" };

    /// <summary>libtorch's intra-op threads; on a busy machine, threads that spin waiting for each other cost more than they give.</summary>
    public static void SetThreads(int? threads)
    {
        if (threads is not { } n) return;
        if (n <= 0) throw new ArgumentException($"--threads is {n}; expected a positive number");
        TorchSharp.torch.set_num_threads(n);
    }

    public static readonly IAnsiConsole Err = CreateErr();

    static IAnsiConsole CreateErr()
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        // Redirected, Spectre assumes 80 columns and wraps; an error message must stay one line in a log.
        if (Console.IsErrorRedirected) console.Profile.Width = 4096;
        return console;
    }

    /// <summary>Initialises the native runtime and resolves the device from the shared options.</summary>
    public static TorchSharp.torch.Device Start(ParseResult parse)
    {
        TorchRuntime.Initialize(parse.GetValue(LibTorchOption));
        // an op that cannot use its fused CUDA kernels says so once, here, and carries on with TorchSharp ops
        CudaKernels.Notices = new ImmediateProgress<string>(line => Err.MarkupLineInterpolated($"[yellow]note:[/] {line}"));
        return DeviceSpec.Resolve(parse.GetValue(DeviceOption));
    }

    /// <summary>Runs a command body; user errors print one line and exit 2, a failed data-parallel job 3, cancellation exits 130.</summary>
    public static Func<ParseResult, CancellationToken, Task<int>> Run(Func<ParseResult, CancellationToken, Task<int>> body) => async (parse, ct) =>
    {
        try { return await body(parse, ct); }
        catch (Exception e) when (e is InvalidInputException or NativeRuntimeException or ArgumentException)
        {
            Err.MarkupLineInterpolated($"[red]error:[/] {e.Message}");
            return 2;
        }
        catch (Distillation.TrainingDivergedException e)
        {
            Err.MarkupLineInterpolated($"[red]error:[/] {e.Message}");
            return 1;
        }
        catch (Runtime.Parallel.ProcessGroupException e)
        {
            Err.MarkupLineInterpolated($"[red]error:[/] {e.Message}");
            return Runtime.Parallel.LaunchResult.PeerFailureExitCode;
        }
        catch (OperationCanceledException)
        {
            Err.MarkupLine("[yellow]cancelled[/]");
            return 130;
        }
    };

    /// <summary>
    /// A synchronous body runs on the thread pool: System.CommandLine installs its Ctrl-C handler only once the action
    /// has returned its task, so a body run inline would be killed by Ctrl-C instead of seeing its token cancelled.
    /// </summary>
    public static Func<ParseResult, CancellationToken, Task<int>> Run(Func<ParseResult, CancellationToken, int> body) =>
        Run((p, ct) => Task.Run(() => body(p, ct), CancellationToken.None));
}
