using TorchSharp.Modules;
using static TorchSharp.torch.optim;

namespace CombaDistill.Distillation;

/// <summary>
/// A checkpoint's optimizer.bin: TorchSharp's optimizer-state format, which is the optimizer's type name as a .NET
/// string, the number of parameter groups and of parameter states as unsigned LEB128, then each group's options and
/// each parameter's state in the optimizer's own encoding. TorchSharp's save_state_dict writes the runtime type's
/// name and its load_state_dict refuses any other, so a checkpoint written by <see cref="FusedAdamW"/> could not be
/// resumed by TorchSharp's AdamW (nor the other way), although the state is the same. Here both write and accept the
/// name "AdamW": checkpoints written before the fused optimizer existed resume with it, and a run saved with the kernel
/// resumes where it cannot build. Counts that do not match the optimizer's are an error that names the file.
/// </summary>
public static class OptimizerStateFile
{
    /// <summary>The name written for TorchSharp's AdamW and for <see cref="FusedAdamW"/>.</summary>
    const string AdamWName = nameof(AdamW);

    public static void Save(OptimizerHelper optimizer, string path)
    {
        using var stream = File.Create(path);
        using var writer = new BinaryWriter(stream);
        writer.Write(NameOf(optimizer));
        var state = optimizer.state_dict();
        writer.Write7BitEncodedInt64(state.Options.Count);
        writer.Write7BitEncodedInt64(state.State.Count);
        foreach (var options in state.Options) options.SaveStateDict(writer);
        foreach (var parameterState in state.State) parameterState.SaveStateDict(writer);
        writer.Flush();
    }

    public static void Load(OptimizerHelper optimizer, string path)
    {
        using var stream = File.OpenRead(path);
        using var reader = new BinaryReader(stream);
        try
        {
            var name = reader.ReadString();
            var expected = NameOf(optimizer);
            // "FusedAdamW": what TorchSharp's writer put in the checkpoints of the fused optimizer's first version
            if (name != expected && !(expected == AdamWName && name == nameof(FusedAdamW)))
                throw new InvalidInputException(path, $"holds the state of a {Bounded(name)} optimizer; this stage uses {expected}");
            var state = optimizer.state_dict();
            var (groups, states) = (reader.Read7BitEncodedInt64(), reader.Read7BitEncodedInt64());
            if (groups != state.Options.Count || states != state.State.Count)
                throw new InvalidInputException(path, $"holds {groups} parameter group(s) and {states} parameter state(s); the optimizer has {state.Options.Count} and {state.State.Count} (was the recipe's 'trainable' changed?)");
            foreach (var options in state.Options) options.LoadStateDict(reader);
            foreach (var parameterState in state.State) parameterState.LoadStateDict(reader);
            if (stream.Position != stream.Length)
                throw new InvalidInputException(path, $"has {stream.Length - stream.Position} byte(s) after the optimizer state");
        }
        catch (Exception e) when (e is IOException or InvalidDataException or FormatException or ArgumentException)
        {
            throw new InvalidInputException(path, $"is not a complete optimizer state ({e.Message})", e);
        }
    }

    static string NameOf(OptimizerHelper optimizer) => optimizer is AdamW ? AdamWName : optimizer.GetType().Name;

    static string Bounded(string name) => name.Length <= 40 ? $"'{name}'" : $"'{name[..40]}…'";
}
