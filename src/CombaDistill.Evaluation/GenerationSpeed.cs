using System.Diagnostics;
using CombaDistill.Modeling;
using CombaDistill.Runtime;
using static TorchSharp.torch;

namespace CombaDistill.Evaluation;

/// <summary>Decoding lengths (tokens held by the state) at which speed and memory are sampled; Warmup steps run first on a throwaway state.</summary>
public sealed record SpeedOptions(IReadOnlyList<int> Lengths, int Warmup = 8)
{
    public void Validate()
    {
        if (Lengths.Count == 0 || Lengths.Any(l => l < 1)) throw new ArgumentException("speed lengths must be ≥ 1");
        if (Warmup < 0) throw new ArgumentException($"warm-up steps must be ≥ 0, got {Warmup}");
    }
}

/// <summary>
/// One sample of greedy decoding once the state holds Length tokens: the speed over the steps since
/// the previous sample, the bytes of the decoding state's tensors, and the process's resident and
/// peak resident memory (since this model's run began).
/// </summary>
public sealed record SpeedPoint(int Length, double TokensPerSecond, long StateBytes, long RssBytes, long PeakRssBytes);

/// <summary>
/// Token-by-token greedy decoding from BOS, timed and measured at each requested length. Each step
/// reads one token through the model's decoding state (the teacher's KV cache, a student's recurrent
/// state) and takes the argmax on the device; end-of-sequence does not stop it.
/// </summary>
public static class GenerationSpeed
{
    public static IReadOnlyList<SpeedPoint> Measure(ICausalLM model, SpeedOptions options,
        IProgress<(int Done, int Total)>? progress = null, CancellationToken cancellationToken = default)
    {
        options.Validate();
        var lengths = options.Lengths.Distinct().Order().ToArray();
        using var noGrad = no_grad();
        if (options.Warmup > 0) Decode(model, options.Warmup, _ => { }, cancellationToken);

        ProcessMemory.ResetPeak();
        var points = new List<SpeedPoint>();
        var clock = Stopwatch.StartNew();
        var previousLength = 0;
        var peak = 0L;
        var next = 0;
        Decode(model, lengths[^1], state =>
        {
            if (state.Length != lengths[next]) return;
            var seconds = clock.Elapsed.TotalSeconds;
            var memory = ProcessMemory.Read();
            // Linux updates VmHWM lazily, so a peak can read lower than an earlier sample: keep the running maximum.
            peak = Math.Max(peak, Math.Max(memory.PeakRssBytes, memory.RssBytes));
            points.Add(new SpeedPoint(lengths[next], (lengths[next] - previousLength) / Math.Max(seconds, 1e-9),
                DecodingStateMemory.TensorBytes(state), memory.RssBytes, peak));
            previousLength = lengths[next++];
            progress?.Report((next, lengths.Length));
            // Measuring is not decoding: the next segment's clock starts after it.
            clock.Restart();
        }, cancellationToken);
        return points;
    }

    /// <summary>Feeds BOS then each argmax until the state holds <paramref name="length"/> tokens, calling <paramref name="afterStep"/> after every step.</summary>
    static void Decode(ICausalLM model, int length, Action<IDecodingState> afterStep, CancellationToken cancellationToken)
    {
        using var state = model.NewState(batch: 1);
        long token = model.Config.BosTokenId;
        while (state.Length < length)
        {
            cancellationToken.ThrowIfCancellationRequested();
            using (NewDisposeScope())
            {
                var logits = model.Forward(tensor(new[] { token }, [1, 1], device: model.Device), state);
                token = logits[0, -1].argmax().item<long>();
            }
            afterStep(state);
        }
    }
}
