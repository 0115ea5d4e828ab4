using System.CommandLine;
using System.CommandLine.Parsing;
using System.Reflection;
using CombaDistill.IO;
using CombaDistill.Runtime;
using CombaDistill.Runtime.Cuda;
using Spectre.Console;
using ScalarType = TorchSharp.torch.ScalarType;

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

    /// <summary>
    /// The dtypes a --dtype option takes: the canonical name (torch's, as config.json writes it) and the other spellings
    /// people type (bf16, fp16, fp32, ...). The one list.
    /// </summary>
    static readonly (ScalarType Type, string Name, string[] Aliases)[] DTypes =
    [
        (ScalarType.BFloat16, "bfloat16", ["bf16"]),
        (ScalarType.Float16, "float16", ["fp16", "f16", "half"]),
        (ScalarType.Float32, "float32", ["fp32", "f32", "float"]),
        (ScalarType.Float64, "float64", ["fp64", "f64", "double"]),
    ];

    /// <summary>
    /// --dtype taking the <paramref name="allowed"/> dtypes by any of their spellings (case ignored); its help lists the
    /// canonical names. Null when the option is not given.
    /// </summary>
    public static Option<ScalarType?> DTypeOption(string description, params ScalarType[] allowed)
    {
        var accepted = allowed.Select(t => DTypes.Single(d => d.Type == t)).ToArray();
        var canonical = string.Join(", ", accepted.Select(d => d.Name));
        return new Option<ScalarType?>("--dtype")
        {
            Description = $"{description}; {string.Join(", ", accepted.Select(d => d.Aliases[0]))} also accepted",
            HelpName = string.Join("|", accepted.Select(d => d.Name)),
            CustomParser = result =>
            {
                var given = result.Tokens[0].Value;
                foreach (var d in accepted)
                    if (d.Name.Equals(given, StringComparison.OrdinalIgnoreCase) || d.Aliases.Contains(given, StringComparer.OrdinalIgnoreCase))
                        return d.Type;
                var known = DTypes.Any(d => d.Name.Equals(given, StringComparison.OrdinalIgnoreCase) || d.Aliases.Contains(given, StringComparer.OrdinalIgnoreCase));
                result.AddError($"--dtype {Bounded.Text(given, 40)} is {(known ? "not supported by this command" : "not a dtype")}; expected one of {canonical} "
                    + $"(or {string.Join(", ", accepted.SelectMany(d => d.Aliases))})");
                return null;
            },
        };
    }

    /// <summary>libtorch's intra-op threads; on a busy machine, threads that spin waiting for each other cost more than they give.</summary>
    public static void SetThreads(int? threads)
    {
        if (threads is not { } n) return;
        if (n <= 0) throw new ArgumentException($"--threads is {n}; expected a positive number");
        TorchSharp.torch.set_num_threads(n);
    }

    public static readonly IAnsiConsole Err = CreateErr();

    // Redirected stdout gets 80 columns from Spectre, which squeezes and wraps the result tables in a log; every command
    // comes through here (Run) before it writes anything.
    static CliCommon()
    {
        if (Console.IsOutputRedirected) AnsiConsole.Profile.Width = Math.Max(AnsiConsole.Profile.Width, 200);
    }

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

    /// <summary>--verbose: a failure prints its stack trace after the one-line error.</summary>
    public static readonly Option<bool> VerboseOption = new("--verbose")
    {
        Description = "on failure, also print the stack trace",
        Recursive = true,
    };

    /// <summary>
    /// The most characters an error line has, the middle of a longer message elided; the guidance an
    /// <see cref="InvalidInputException"/> ends with (the names a field takes) comes after it whole.
    /// </summary>
    public const int MaxErrorLength = 300;

    /// <summary>Exit codes: 2 bad input, 1 a failure at run time, 3 a failed data-parallel peer, 130 cancelled.</summary>
    public const int BadInput = 2, RunFailure = 1, Cancelled = 130;

    /// <summary>
    /// Runs a command body. Every failure is one line on standard error (at most <see cref="MaxErrorLength"/>
    /// characters) and an exit code: 2 for bad input (the file or field is named), 1 for a failure at run time (disk
    /// full, a native error, a bug), 3 for a failed data-parallel peer, 130 for cancellation. --verbose adds the trace.
    /// </summary>
    public static Func<ParseResult, CancellationToken, Task<int>> Run(Func<ParseResult, CancellationToken, Task<int>> body) => async (parse, ct) =>
    {
        try { return await body(parse, ct); }
        catch (Exception e)
        {
            var (code, line) = Describe(e);
            if (code == Cancelled) Err.MarkupLine("[yellow]cancelled[/]");
            else Err.MarkupLineInterpolated($"[red]error:[/] {line}");
            if (parse.GetValue(VerboseOption)) Console.Error.WriteLine(e.ToString());
            return code;
        }
    };

    /// <summary>How many of a command line's further errors are listed after the first (then "and N more").</summary>
    public const int MaxFurtherParseErrors = 3;

    /// <summary>
    /// A command line that does not parse, exit 2. The first line is the error that explains the others, then each
    /// further error on a line of its own, at most <see cref="MaxFurtherParseErrors"/> of them.
    /// </summary>
    public static int ParseError(ParseResult parse)
    {
        var (first, further) = ParseErrorLines(parse);
        Err.MarkupLineInterpolated($"[red]error:[/] {first}");
        foreach (var line in further.Take(MaxFurtherParseErrors)) Err.MarkupLineInterpolated($"  also: {line}");
        if (further.Count > MaxFurtherParseErrors) Err.MarkupLineInterpolated($"  (and {further.Count - MaxFurtherParseErrors} more)");
        return BadInput;
    }

    /// <summary>
    /// What <see cref="ParseError"/> prints. System.CommandLine puts "Required command was not provided" before the token
    /// that was meant to be the command, and words every unknown token as "Unrecognized command or argument", so the
    /// tokens the command does not know come first, each with the nearest of the command's own subcommands or options
    /// when one is within a typo, and the parser's errors that only restate them are dropped.
    /// </summary>
    static (string First, List<string> Further) ParseErrorLines(ParseResult parse)
    {
        var command = parse.CommandResult;
        var subcommands = command.Command.Subcommands.Where(c => !c.Hidden).ToList();
        var errors = parse.Errors.Select(e => e.Message.TrimEnd('.')).ToList();
        var unknown = new List<string>();
        string? previous = null;
        var afterUnknownCommand = false;
        foreach (var token in parse.UnmatchedTokens)
        {
            errors.Remove($"Unrecognized command or argument '{token}'");
            // what follows an unknown command was meant for that command
            if (afterUnknownCommand) continue;
            var isOption = token.StartsWith('-');
            // the word after an unknown option is most likely that option's value, not a mistake of its own
            if (!isOption && previous is not null && previous.StartsWith('-')) { previous = null; continue; }
            previous = token;
            var expectsCommand = !isOption && subcommands.Count > 0;
            if (expectsCommand) (afterUnknownCommand, errors) = (true, errors.Where(e => e != RequiredCommand).ToList());
            IEnumerable<string> known = isOption ? OptionNames(command) : expectsCommand ? subcommands.SelectMany(c => c.Aliases.Prepend(c.Name)) : [];
            var closest = Spelling.Closest(token, known);
            unknown.Add($"unknown {(isOption ? "option" : expectsCommand ? "command" : "argument")} '{Bounded.Text(token, 80)}'"
                + (command.Parent is null ? "" : $" for '{command.Command.Name}'") + (closest is null ? "" : $"; did you mean '{closest}'?"));
        }
        // "Required command was not provided" does not say which commands there are
        var commandName = command.Parent is null ? "combadistill" : $"'{command.Command.Name}'";
        errors = errors.Select(e => e == RequiredCommand ? $"{commandName} needs a command: one of {string.Join(", ", subcommands.Select(c => c.Name))}" : e).ToList();
        var all = unknown.Concat(errors).Select(e => Bounded.Line(e, MaxErrorLength)).ToList();
        var first = $"{all[0]} (see '{string.Join(' ', CommandPath(command))} --help')";
        return (first, all.Skip(1).ToList());
    }

    /// <summary>System.CommandLine's error for a command line that stops where a subcommand is needed.</summary>
    const string RequiredCommand = "Required command was not provided";

    /// <summary>combadistill and the subcommands down to <paramref name="command"/>, as the user types them.</summary>
    static IEnumerable<string> CommandPath(CommandResult command)
    {
        var names = new List<string>();
        for (SymbolResult? at = command; at is not null; at = at.Parent)
            if (at is CommandResult c) names.Add(c.Parent is null ? "combadistill" : c.Command.Name);
        names.Reverse();
        return names;
    }

    /// <summary>Every option <paramref name="command"/> takes: its own and its parents' recursive ones (--device, --help), hidden ones left out.</summary>
    static IEnumerable<string> OptionNames(CommandResult command)
    {
        for (SymbolResult? at = command; at is not null; at = at.Parent)
            if (at is CommandResult c)
                foreach (var option in c.Command.Options.Where(o => !o.Hidden && (c == command || o.Recursive)))
                    // short forms (-h, /?) are too short to suggest: any two-letter typo would be one edit from them
                    foreach (var name in option.Aliases.Prepend(option.Name).Where(n => n.TrimStart('-', '/').Length > 1)) yield return name;
    }

    /// <summary>The exit code and the one-line message for a failure.</summary>
    public static (int Code, string Line) Describe(Exception e)
    {
        while (e is AggregateException { InnerExceptions.Count: 1 } a) e = a.InnerExceptions[0];
        if (e is TargetInvocationException { InnerException: { } inner }) e = inner;
        var (code, text) = e switch
        {
            OperationCanceledException => (Cancelled, "cancelled"),
            InvalidInputException or NativeRuntimeException or ArgumentException => (BadInput, e.Message),
            UnauthorizedAccessException => (BadInput, $"permission denied: {e.Message}"),
            Runtime.Parallel.ProcessGroupException => (Runtime.Parallel.LaunchResult.PeerFailureExitCode, e.Message),
            Distillation.TrainingDivergedException => (RunFailure, e.Message),
            IOException io when IsOutOfSpace(io) => (RunFailure, $"no space left on device ({io.Message}); nothing was replaced, free space and run again"),
            IOException => (RunFailure, $"I/O error: {e.Message}"),
            OutOfMemoryException => (RunFailure, "out of memory"),
            // libtorch's allocators (CUDA or CPU) out of memory: what was asked for, and what to change
            _ when MemoryExhaustion.Describe(e) is { } exhausted => (RunFailure, exhausted),
            _ => (RunFailure, $"{e.GetType().Name}: {e.Message} (an internal error; --verbose prints where)"),
        };
        // The bound is against huge inputs quoted in the message; the tool's own list of valid names is short and is the
        // answer the user needs, so it is never the part that gets elided.
        if (e is InvalidInputException { Guidance: { Length: > 0 } guidance } && text.EndsWith(guidance, StringComparison.Ordinal))
            return (code, Bounded.Line(text[..^guidance.Length], MaxErrorLength) + guidance);
        return (code, Bounded.Line(text, MaxErrorLength));
    }

    /// <summary>ENOSPC or EDQUOT: .NET puts the errno in HResult on Unix.</summary>
    public static bool IsOutOfSpace(IOException e) => e.HResult is 28 or 122 || e.Message.Contains("No space left on device", StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// A synchronous body runs on the thread pool, so that the invocation's thread stays free while it works (the signal
    /// handler, CliSignals, cancels its token from another thread either way).
    /// </summary>
    public static Func<ParseResult, CancellationToken, Task<int>> Run(Func<ParseResult, CancellationToken, int> body) =>
        Run((p, ct) => Task.Run(() => body(p, ct), CancellationToken.None));
}
