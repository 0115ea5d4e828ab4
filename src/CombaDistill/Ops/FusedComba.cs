using CombaDistill.Runtime.Cuda;
using TorchSharp;
using static TorchSharp.torch;

namespace CombaDistill.Ops;

/// <summary>
/// Chunkwise Comba through the fused CUDA kernels of kernels/comba_chunk.cu: three launches forward (W and U of
/// every chunk; the sequential state pass; the output) and three backward, wrapped in a custom autograd function so
/// training uses them without knowing. Same signature and semantics as <see cref="ChunkwiseComba.Forward"/>, which
/// it falls back to (with a one-line notice on CUDA) where the kernels cannot run: not CUDA, NVRTC or the driver
/// missing, Dk ≠ Dv, a head dim other than 64/128/256, a chunk size other than 64, or float64.
/// <para>
/// bf16 q at head dim 64 or 128 takes the bf16 kernels: q, k and v are read raw in bf16 (any T), the kernels
/// normalise q and k and form q̃ = q̂ − d k̂ themselves (with their gradients), and the output and the gradients of q,
/// k and v come back in bf16, those of the gates in float32. Otherwise the L2 normalisation and the correction are
/// ordinary ops (autograd differentiates them) and the kernels see q̃, k̂, v, g, β and κ = βλ in float32, padded
/// with zeros to whole chunks. Float32 inputs run
/// the kernels' float32 arithmetic (≤ 1e-5 of the float64 reference); bf16 and f16 inputs run their tensor-core
/// products (tf32 operands, float32 accumulation), unless <see cref="Arithmetic.Float32"/> is asked for. The output
/// comes back in q's dtype, the final state in float32. docs/kernels.md has the measured errors of each.
/// </para>
/// </summary>
public static class FusedComba
{
    /// <summary>
    /// How the kernels multiply: Auto is Float32 for float32 inputs and TensorCores (tf32 operands on float32 copies)
    /// otherwise, except that with <see cref="Bf16ByDefault"/> (the default) it is Bf16 for bf16 inputs at head dim 64 or 128. Bf16 reads q, k
    /// and v as bf16 and multiplies bf16 operands on the tensor cores (mma m16n8k16, float32 accumulation); it needs
    /// bf16 q and a head dim of 64 or 128.
    /// </summary>
    public enum Arithmetic { Auto, Float32, TensorCores, Bf16 }

    /// <summary>
    /// Whether Auto takes the bf16 kernels for bf16 inputs at head dim 64 or 128: yes unless
    /// <c>COMBADISTILL_FUSED_BF16</c> is 0, false, off or no, which keeps the tf32 kernels on float32 copies (to compare the two, or to
    /// fall back should the bf16 kernels misbehave on a new GPU). Both passed the float64 check on an H100, through
    /// the measuring script and through this class's launches (FusedCombaTests, docs/kernels.md).
    /// </summary>
    public static bool Bf16ByDefault { get; set; } =
        Runtime.EnvironmentSwitch.IsOn("COMBADISTILL_FUSED_BF16", whenUnset: true);

    /// <summary>Head dims the bf16 kernels take (at 256 their backward's tiles would not fit shared memory).</summary>
    public static readonly int[] Bf16HeadDims = [64, 128];

    public const string KernelFile = "kernels/comba_chunk.cu";
    public const int ChunkSize = 64;
    public static readonly int[] SupportedHeadDims = [64, 128, 256];
    const int Threads = 256, Warps = Threads / 32, StateSlice = 32;

    /// <summary>Null when the fused kernels take this call; otherwise why not, in one line.</summary>
    public static string? UnsupportedReason(Tensor q, Tensor k, Tensor v, int chunkSize = ChunkSize)
    {
        if (q.device.type != DeviceType.CUDA) return $"{q.device} is not a CUDA device";
        if (q.dtype == ScalarType.Float64) return "float64 runs on the TorchSharp path";
        if (k.shape[^1] != v.shape[^1]) return $"key dim {k.shape[^1]} ≠ value dim {v.shape[^1]}";
        if (!SupportedHeadDims.Contains((int)k.shape[^1])) return $"head dim {k.shape[^1]} is not one of {string.Join("/", SupportedHeadDims)}";
        if (chunkSize != ChunkSize) return $"chunk size {chunkSize} (the kernels use {ChunkSize})";
        return CudaKernels.UnavailableReason(q.device);
    }

    /// <summary>
    /// The Comba recurrence over a sequence, on the fused kernels where they apply (<see cref="UnsupportedReason"/>) and
    /// on the chunkwise ops otherwise. q, k, v are (B, H, T, D) and may be transposed views of the projections'
    /// (B, T, H, D) layout: the bf16 kernels read them through their strides. <paramref name="rotary"/>, (T, D) cos and
    /// sin tables in the rotate_half layout, rotates q and k first: inside the bf16 kernels, by
    /// <see cref="Rotary.Apply"/> on every other path.
    /// </summary>
    public static (Tensor Output, Tensor FinalState) Forward(
        Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor lambda, Tensor d, double scale,
        Tensor? initialState = null, int chunkSize = ChunkSize, Arithmetic arithmetic = Arithmetic.Auto,
        (Tensor Cos, Tensor Sin)? rotary = null)
    {
        var shape = CombaShape.OfSequence(q, k, v, g, beta, lambda, d, initialState);
        if (rotary is { } tables && (tables.Cos.shape.Length != 2 || tables.Cos.shape[0] != shape.Length || tables.Cos.shape[1] != shape.KeyDim
                                     || !tables.Sin.shape.SequenceEqual(tables.Cos.shape)))
            throw new ArgumentException($"rotary tables must be (T, D) = ({shape.Length}, {shape.KeyDim}); got cos [{string.Join(", ", tables.Cos.shape)}] and sin [{string.Join(", ", tables.Sin.shape)}]");
        if (UnsupportedReason(q, k, v, chunkSize) is { } why)
        {
            if (q.device.type == DeviceType.CUDA) CudaKernels.ReportFallback("Comba", why);
            (q, k) = Rotary.Apply(q, k, rotary);
            return ChunkwiseComba.Forward(q, k, v, g, beta, lambda, d, scale, initialState, chunkSize);
        }
        using var scope = NewDisposeScope();
        var (B, H, Hkv, G, T, D) = (shape.Batch, shape.Heads, shape.KvHeads, shape.Groups, shape.Length, shape.KeyDim);
        var f32 = ScalarType.Float32;
        if (arithmetic == Arithmetic.Auto)
            arithmetic = q.dtype == ScalarType.Float32 ? Arithmetic.Float32
                : q.dtype == ScalarType.BFloat16 && Bf16ByDefault && Bf16HeadDims.Contains((int)D) ? Arithmetic.Bf16 : Arithmetic.TensorCores;
        var beta32 = beta.to(f32);
        var kappa = beta32 * lambda.to(f32).view(1, H, 1);
        if (arithmetic == Arithmetic.Bf16)
        {
            if (!Bf16HeadDims.Contains((int)D)) throw new ArgumentException($"the bf16 kernels take head dims {string.Join("/", Bf16HeadDims)}, not {D}");
            // raw q, k, v in bf16: the kernels normalise q and k and form q̃ = q̂ − d k̂ themselves, and take any T
            var bf = ScalarType.BFloat16;
            var outs = Bf16Function.apply(Bf16Function.Operand(q.to(bf)), Bf16Function.Operand(k.to(bf)), v.to(bf).contiguous(), d.to(f32),
                g.to(f32).contiguous(), beta32.contiguous(), kappa.contiguous(), initialState?.to(f32).contiguous(), scale,
                rotary?.Cos.to(f32, q.device).contiguous(), rotary?.Sin.to(f32, q.device).contiguous());
            return (outs[0].to(q.dtype).MoveToOuterDisposeScope(), outs[1].MoveToOuterDisposeScope());
        }
        (q, k) = Rotary.Apply(q, k, rotary);
        var kHat = CombaMath.L2Normalize(k.to(f32));
        var readout = (CombaMath.L2Normalize(q.to(f32)).view(B, Hkv, G, T, D)
                       - d.to(f32).view(1, Hkv, G, 1, 1) * kHat.unsqueeze(2)).view(B, H, T, D);
        // whole chunks: zeros (g = β = κ = 0) leave the state untouched
        var padding = (ChunkSize - T % ChunkSize) % ChunkSize;
        Tensor Padded(Tensor x, bool perToken = false) =>
            (padding == 0 ? x : nn.functional.pad(x, perToken ? [0, padding] : [0, 0, 0, padding])).contiguous();
        var outputs = ChunkFunction.apply(Padded(readout), Padded(kHat), Padded(v.to(f32)), Padded(g.to(f32), true),
            Padded(beta32, true), Padded(kappa, true), initialState?.to(f32).contiguous(), scale,
            arithmetic == Arithmetic.Float32 ? "f32" : "tf32");
        var o = padding == 0 ? outputs[0] : outputs[0].narrow(2, 0, T);
        return (o.to(q.dtype).MoveToOuterDisposeScope(), outputs[1].MoveToOuterDisposeScope());
    }

    // dynamic shared memory per stage, in floats, for head dim D (the kernels carve it in this order; rows of C×C
    // matrices and of state slices are padded by 4 floats so that tensor-core fragment loads hit distinct banks)
    const int Row = ChunkSize + 4, SliceRow = StateSlice + 4;
    static readonly Dictionary<string, Func<int, int>> Stages = new()
    {
        ["fwd_prepare"] = D => 2 * ChunkSize * Row + 4 * ChunkSize,
        ["fwd_state"] = D => D * SliceRow + ChunkSize * SliceRow + 4 * ChunkSize,
        ["fwd_output"] = D => ChunkSize * Row + 5 * ChunkSize,
        ["bwd_dupart"] = D => ChunkSize * Row + 4 * ChunkSize,
        ["bwd_state"] = D => D * SliceRow + 2 * ChunkSize * SliceRow + 5 * ChunkSize,
        ["bwd_local"] = D => 4 * ChunkSize * Row + 8 * ChunkSize + Threads,
    };

    // Stages whose "tf32s" variant (the chunk's q and k rows staged in shared memory first) measured faster on an H200
    // (docs/kernels.md: prepare 0.86 → 0.75 ms, dupart 0.42 → 0.29 ms; output and local lose occupancy and slow down),
    // with the q/k tiles each stage stages.
    static readonly Dictionary<string, int> StagedTiles = new() { ["fwd_prepare"] = 1, ["bwd_dupart"] = 2 };

    // bf16 kernels' dynamic shared memory in bytes (kernels/comba_chunk.cu carves it in this order): 64-row tiles of D
    // bf16 with rows padded by 8 elements, D×D state tiles likewise, C×C bf16 (stride 72) and float (stride 68)
    // matrices, 64×32 state-slice tiles (stride 40), and the per-row gate vectors
    static int Bf16Shared(string stage, int D)
    {
        if (stage.StartsWith("norm_")) return 0;
        int tile = ChunkSize * (D + 8) * 2, state = D * (D + 8) * 2, cc = ChunkSize * 72 * 2, ccf = ChunkSize * 68 * 4, slice = ChunkSize * 40 * 2;
        return stage switch
        {
            // A (a float C×C) and then M's two bf16 copies share 2·cc: 53 KB at D = 128, four blocks per SM
            "fwd_prepare" => 2 * tile + 2 * cc + 4 * ChunkSize * 4,
            "fwd_state" => 2 * (2 * tile + slice) + D * 40 * 2 + slice + 2 * ChunkSize * 4,
            "fwd_output" => 3 * tile + state + cc + 2 * ChunkSize * 4,
            "bwd_dupart" => 3 * tile + cc + 2 * ChunkSize * 4,
            "bwd_state" => 2 * (3 * tile + slice + ChunkSize * StateSlice * 4) + D * 40 * 2 + 2 * slice + 2 * ChunkSize * 4,
            "bwd_local" => 6 * tile + 2 * state + 3 * cc + ccf + (8 * ChunkSize + 1) * 4,
            _ => throw new ArgumentException(stage),
        };
    }

    static void LaunchBf16(Device device, string stage, int D, (int, int) grid, params object[] args) =>
        Bf16Kernels.For(device).Kernel($"comba_{stage}_{D}_bf16").Launch((grid.Item1, grid.Item2, 1), (Threads, 1, 1), Bf16Shared(stage, D), args);

    static readonly string[] Bf16KernelNames =
    [
        .. from dim in Bf16HeadDims from stage in Stages.Keys.Append("norm_fwd").Append("norm_bwd") select $"comba_{stage}_{dim}_bf16",
    ];

    static readonly string[] FloatKernelNames =
    [
        .. from dim in SupportedHeadDims from stage in Stages.Keys from arithmetic in new[] { "f32", "tf32" } select $"comba_{stage}_{dim}_{arithmetic}",
        .. from dim in SupportedHeadDims where dim <= 128 from stage in StagedTiles.Keys select $"comba_{stage}_{dim}_tf32s",
    ];

    // one module per family, each compiling only its own entry points (the file's COMBA_ONLY_* switches): a bf16 run
    // builds 16 kernels on a fresh machine instead of 64
    static readonly EmbeddedModule Bf16Kernels = new(KernelFile, Bf16KernelNames,
        new KernelCompileOptions { Defines = ["COMBA_ONLY_BF16"] });
    static readonly EmbeddedModule Kernels = new(KernelFile, FloatKernelNames, new KernelCompileOptions { Defines = ["COMBA_ONLY_FLOAT32"] });

    static void Launch(Device device, string stage, int D, string arithmetic, (int, int) grid, params object[] args)
    {
        var staged = arithmetic == "tf32" && D <= 128 && StagedTiles.ContainsKey(stage);
        var floats = Stages[stage](D) + (staged ? StagedTiles[stage] * ChunkSize * (D + 4) : 0);
        Kernels.For(device).Kernel($"comba_{stage}_{D}_{(staged ? "tf32s" : arithmetic)}").Launch((grid.Item1, grid.Item2, 1), (Threads, 1, 1), 4 * floats, args);
    }

    /// <summary>
    /// forward(q, k (bf16, raw, see <see cref="Operand"/>), v (bf16), d (float32, one per query head), g, β, κ
    /// (float32), h0?, scale, cos?, sin? (float32 (T, D))) → (o bf16, h_T float32), any T. comba_norm_fwd rotates q and
    /// k by the tables when given and forms k̂ and q̃ = q̂ − d k̂ first; saves q, k, v, d, the gates, W, M, Ũ (bf16,
    /// (B·H, Tp, D) and (B·H, N, C, C)), the chunk-start states (bf16), and q̃ and k̂ (the backward's kernels read them,
    /// and comba_norm_bwd reads the raw q and k). U is a forward temporary: the backward uses dA = −dVβ Ũᵀ instead of U
    /// and W (docs/kernels.md).
    /// </summary>
    sealed class Bf16Function : autograd.MultiTensorFunction<Bf16Function>
    {
        public override string Name => "FusedCombaBf16";

        /// <summary>
        /// q or k as the norm kernels read it: as it is when (B, H, T, D) is contiguous or a transposed view of a
        /// contiguous (B, T, H, D) (what the projections make), 8-byte aligned; an aligned copy otherwise (a clone
        /// where the tensor is contiguous but misaligned, since contiguous() would hand back the same storage).
        /// </summary>
        public static Tensor Operand(Tensor x) => Readable(x) ? x : x.is_contiguous() ? x.clone() : x.contiguous();

        static bool Readable(Tensor x) =>
            x.stride(3) == 1 && (x.is_contiguous() || x.transpose(1, 2).is_contiguous()) && (long)TensorMemory.DataPointer(x) % 8 == 0;

        /// <summary>An uninitialised tensor in <paramref name="x"/>'s layout (one of the two <see cref="Operand"/> keeps).</summary>
        static Tensor EmptyInLayoutOf(Tensor x) =>
            x.is_contiguous() ? empty_like(x) : empty([x.shape[0], x.shape[2], x.shape[1], x.shape[3]], x.dtype, x.device).transpose(1, 2);

        // a strided operand goes to the kernels as its data pointer (the launcher takes contiguous tensors only) and
        // its batch, head and time strides
        static object[] Strided(Tensor x)
        {
            // the launcher's own checks (contiguous, on the kernel's device) do not apply to a raw pointer: these do
            if (x.device_type != DeviceType.CUDA) throw new ArgumentException($"the Comba norm kernels take CUDA tensors, not {x.device}");
            if (!Readable(x)) throw new ArgumentException($"the Comba norm kernels read (B, H, T, D) contiguous or a transposed (B, T, H, D), 8-byte aligned; got strides [{string.Join(", ", x.stride())}] (pass it through Operand)");
            return [TensorMemory.DataPointer(x)];
        }

        static object[] Strides(Tensor q, Tensor k) => [q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2)];

        static object Table(Tensor? t) => (object?)t ?? IntPtr.Zero;

        static (Tensor Readout, Tensor KHat) Normalized(Tensor q, Tensor k, Tensor d, Tensor? cos, Tensor? sin)
        {
            var (B, H, T, D) = ((int)q.shape[0], (int)q.shape[1], (int)q.shape[2], (int)q.shape[3]);
            int Hkv = (int)k.shape[1], rows = B * Hkv * T;
            var readout = empty([B, H, T, D], q.dtype, q.device);
            var kHat = empty([B, Hkv, T, D], k.dtype, k.device);
            LaunchBf16(q.device, "norm_fwd", D, ((rows + Warps - 1) / Warps, 1),
                [.. Strided(q), .. Strided(k), d, Table(cos), Table(sin), readout, kHat, H, Hkv, T, rows, .. Strides(q, k)]);
            return (readout, kHat);
        }

        public override List<Tensor> forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var (q, k, v, d, g, beta, kappa) = ((Tensor)vars[0], (Tensor)vars[1], (Tensor)vars[2], ((Tensor)vars[3]).contiguous(), (Tensor)vars[4], (Tensor)vars[5], (Tensor)vars[6]);
            var h0 = vars[7] as Tensor;
            var scale = (float)(double)vars[8];
            var (cos, sin) = (vars[9] as Tensor, vars[10] as Tensor);
            if (k.device_index != q.device_index || (cos is not null && cos.device_index != q.device_index))
                throw new ArgumentException($"FusedComba: q on {q.device}, k on {k.device}{(cos is null ? "" : $", the rotary tables on {cos.device}")}: one device");
            var (B, H, T, D) = ((int)q.shape[0], (int)q.shape[1], (int)q.shape[2], (int)q.shape[3]);
            int Hkv = (int)k.shape[1], N = (T + ChunkSize - 1) / ChunkSize, Tp = N * ChunkSize, BH = B * H;
            var device = q.device;
            var bf = ScalarType.BFloat16;
            var W = empty([BH, Tp, D], bf, device);
            var Ut = empty_like(W);
            var M = empty([BH, N, ChunkSize, ChunkSize], bf, device);
            var H0 = empty([BH, N, D, D], bf, device);
            var hT = empty([B, H, D, D], ScalarType.Float32, device);
            var o = empty([B, H, T, D], bf, device);
            var (readout, kHat) = Normalized(q, k, d, cos, sin);
            using (var U = empty_like(W))
            {
                LaunchBf16(device, "fwd_prepare", D, (N, BH), kHat, v, g, beta, kappa, W, U, M, H, Hkv, T);
                LaunchBf16(device, "fwd_state", D, (D / StateSlice, BH), kHat, g, W, U, (object?)h0 ?? IntPtr.Zero, Ut, H0, hT, H, Hkv, T, N);
            }
            LaunchBf16(device, "fwd_output", D, (N, BH), readout, kHat, g, Ut, H0, o, scale, H, Hkv, T);
            // q̃ and k̂ are kept for the backward (one bf16 copy of q and of k: cheaper than a second norm_fwd)
            ctx.save_for_backward(cos is null || sin is null
                ? [q, k, v, d, g, beta, kappa, W, M, Ut, H0, readout, kHat]
                : [q, k, v, d, g, beta, kappa, W, M, Ut, H0, readout, kHat, cos, sin]);
            ctx.save_data("scale", scale);
            ctx.save_data("h0", h0 is not null);
            ctx.set_materialize_grads(false);
            return [o, hT];
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, List<Tensor> grads) =>
            GradientHandoff.Guard(Name, () => Backward(ctx, grads));

        static List<Tensor> Backward(autograd.AutogradContext ctx, List<Tensor> grads)
        {
            var saved = ctx.get_saved_variables();
            var (q, k, v, d, g, beta, kappa) = (saved[0], saved[1], saved[2], saved[3], saved[4], saved[5], saved[6]);
            var (W, M, Ut, H0, readout, kHat) = (saved[7], saved[8], saved[9], saved[10], saved[11], saved[12]);
            var (cos, sin) = saved.Count > 13 ? (saved[13], saved[14]) : ((Tensor?)null, (Tensor?)null);
            var scale = (float)ctx.get_data("scale");
            var hasInitialState = (bool)ctx.get_data("h0");
            var (B, H, T, D) = ((int)q.shape[0], (int)q.shape[1], (int)q.shape[2], (int)q.shape[3]);
            int Hkv = (int)k.shape[1], N = (T + ChunkSize - 1) / ChunkSize, Tp = N * ChunkSize, BH = B * H, rows = B * Hkv * T;
            var device = q.device;
            var bf = ScalarType.BFloat16;
            Tensor dq, dk, dv, dd, dg, dbeta, dkappa, dh0;
            using (var scope = NewDisposeScope())
            {
                static bool Defined(Tensor? t) => t is not null && !t.IsInvalid;
                var dO = Defined(grads[0]) ? grads[0].to(bf, device).contiguous() : zeros([B, H, T, D], bf, device);
                object dhT = Defined(grads[1]) ? (object)grads[1].to(ScalarType.Float32, device).contiguous() : IntPtr.Zero;
                var dUp = empty([BH, Tp, D], ScalarType.Float32, device);
                var dUt = empty_like(W);
                var dH1 = empty_like(H0);
                dh0 = empty([B, H, D, D], ScalarType.Float32, device);
                var dReadout = empty([B, H, T, D], bf, device);
                var dkPerHead = empty([B, H, T, D], bf, device);
                var dvPerHead = empty([B, H, T, D], bf, device);
                dg = empty([B, H, T], ScalarType.Float32, device);
                dbeta = empty_like(dg);
                dkappa = empty_like(dg);
                LaunchBf16(device, "bwd_dupart", D, (N, BH), readout, kHat, g, dO, dUp, scale, H, Hkv, T);
                LaunchBf16(device, "bwd_state", D, (D / StateSlice, BH), readout, kHat, g, W, dO, dUp, dhT, dUt, dH1, dh0, scale, H, Hkv, T, N);
                LaunchBf16(device, "bwd_local", D, (N, BH), readout, kHat, v, g, beta, kappa, M, Ut, H0, dH1, dUt, dO,
                    dReadout, dkPerHead, dvPerHead, dg, dbeta, dkappa, scale, H, Hkv, T);
                // through the normalisation and the readout correction: dq, dk (a KV head's group summed inside) and
                // d's gradient per (b, h, t), summed here
                // dq and dk in q's and k's own layouts, so that autograd hands them back through the views without copies
                dq = EmptyInLayoutOf(q);
                dk = EmptyInLayoutOf(k);
                var ddPerRow = empty([B, H, T], ScalarType.Float32, device);
                LaunchBf16(device, "norm_bwd", D, ((rows + Warps - 1) / Warps, 1),
                    [.. Strided(q), .. Strided(k), d, Table(cos), Table(sin), dReadout, dkPerHead, .. Strided(dq), .. Strided(dk), ddPerRow, H, Hkv, T, rows, .. Strides(q, k)]);
                dd = ddPerRow.sum([0, 2]).view(d.shape);
                // a KV head's value gradient is the sum over the query heads of its group (in float32, then bf16)
                dv = H == Hkv ? dvPerHead : dvPerHead.view(B, Hkv, H / Hkv, T, D).sum(2, type: ScalarType.Float32).to(bf);
                foreach (var t in new[] { dq, dk, dv, dd, dg, dbeta, dkappa, dh0 }) t.MoveToOuterDisposeScope();
            }
            if (!hasInitialState) dh0.Dispose();
            foreach (var t in saved.Concat(grads)) t?.Dispose();
            // no gradient for the scale and the rotary tables
            return GradientHandoff.Return(dq, dk, dv, dd, dg, dbeta, dkappa, hasInitialState ? dh0 : null, null, null, null);
        }
    }

    /// <summary>
    /// forward(q̃, k̂, v, g, β, κ, h0?, scale, arithmetic) → (o, h_T), T a whole number of chunks. Saves W, U, Ũ and
    /// every chunk-start state for backward (recomputing them would cost a second forward; at training shapes they
    /// are a few times the activations).
    /// </summary>
    sealed class ChunkFunction : autograd.MultiTensorFunction<ChunkFunction>
    {
        public override string Name => "FusedCombaChunk";

        public override List<Tensor> forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var (q, k, v, g, beta, kappa) = ((Tensor)vars[0], (Tensor)vars[1], (Tensor)vars[2], (Tensor)vars[3], (Tensor)vars[4], (Tensor)vars[5]);
            var h0 = vars[6] as Tensor;
            var scale = (float)(double)vars[7];
            var arithmetic = (string)vars[8];
            var (B, H, T, D) = ((int)q.shape[0], (int)q.shape[1], (int)q.shape[2], (int)q.shape[3]);
            int Hkv = (int)k.shape[1], N = (T + ChunkSize - 1) / ChunkSize, Tp = N * ChunkSize, BH = B * H;
            var device = q.device;
            var W = empty([BH, Tp, D], ScalarType.Float32, device);
            var U = empty_like(W);
            var Ut = empty_like(W);
            var H0 = empty([BH, N, D, D], ScalarType.Float32, device);
            var hT = empty([B, H, D, D], ScalarType.Float32, device);
            var o = empty([B, H, T, D], ScalarType.Float32, device);
            Launch(device, "fwd_prepare", D, arithmetic, (N, BH), k, v, g, beta, kappa, W, U, H, Hkv, T);
            Launch(device, "fwd_state", D, arithmetic, (D / StateSlice, BH), k, g, W, U, (object?)h0 ?? IntPtr.Zero, Ut, H0, hT, H, Hkv, T, N);
            Launch(device, "fwd_output", D, arithmetic, (N, BH), q, k, g, Ut, H0, o, scale, H, Hkv, T);
            ctx.save_for_backward([q, k, v, g, beta, kappa, W, U, Ut, H0]);
            ctx.save_data("scale", scale);
            ctx.save_data("h0", h0 is not null);
            ctx.save_data("arithmetic", arithmetic);
            // an unused output (typically the final state) gets no gradient rather than zeros: autograd would build those
            // zeros from the output's wrapper, which the caller may have disposed by then (seen in bench kernel)
            ctx.set_materialize_grads(false);
            return [o, hT];
        }

        // Guard: an exception must not cross libtorch's native frames (it would hang the process; docs/custom-autograd.md)
        public override List<Tensor> backward(autograd.AutogradContext ctx, List<Tensor> grads) =>
            GradientHandoff.Guard(Name, () => Backward(ctx, grads));

        static List<Tensor> Backward(autograd.AutogradContext ctx, List<Tensor> grads)
        {
            var saved = ctx.get_saved_variables();
            var (q, k, v, g, beta, kappa, W, U, Ut, H0) = (saved[0], saved[1], saved[2], saved[3], saved[4], saved[5], saved[6], saved[7], saved[8], saved[9]);
            var scale = (float)ctx.get_data("scale");
            var hasInitialState = (bool)ctx.get_data("h0");
            var arithmetic = (string)ctx.get_data("arithmetic");
            var (B, H, T, D) = ((int)q.shape[0], (int)q.shape[1], (int)q.shape[2], (int)q.shape[3]);
            int Hkv = (int)k.shape[1], N = (T + ChunkSize - 1) / ChunkSize, BH = B * H;
            var device = q.device;
            Tensor dq, dk, dv, dg, dbeta, dkappa, dh0;
            using (var scope = NewDisposeScope())
            {
                // an unused output's gradient comes undefined (materialize_grads is off)
                static bool Defined(Tensor? t) => t is not null && !t.IsInvalid;
                var dO = Defined(grads[0]) ? grads[0].to(ScalarType.Float32, device).contiguous() : zeros([B, H, T, D], ScalarType.Float32, device);
                // (object) first: TorchSharp converts IntPtr.Zero implicitly into a CPU scalar tensor otherwise
                object dhT = Defined(grads[1]) ? (object)grads[1].to(ScalarType.Float32, device).contiguous() : IntPtr.Zero;
                var dUp = empty_like(W);
                var dUt = empty_like(W);
                var dVb = empty_like(W);
                var dKw = empty_like(W);
                var dH1 = empty_like(H0);
                dh0 = empty([B, H, D, D], ScalarType.Float32, device);
                dq = empty([B, H, T, D], ScalarType.Float32, device);
                var dkPerHead = empty([B, H, T, D], ScalarType.Float32, device);
                var dvPerHead = empty([B, H, T, D], ScalarType.Float32, device);
                dg = empty([B, H, T], ScalarType.Float32, device);
                dbeta = empty_like(dg);
                dkappa = empty_like(dg);
                Launch(device, "bwd_dupart", D, arithmetic, (N, BH), q, k, g, dO, dUp, scale, H, Hkv, T);
                Launch(device, "bwd_state", D, arithmetic, (D / StateSlice, BH), q, k, g, W, dO, dUp, dhT, dUt, dH1, dh0, scale, H, Hkv, T, N);
                Launch(device, "bwd_local", D, arithmetic, (N, BH), q, k, v, g, beta, kappa, W, U, Ut, H0, dH1, dUt, dO, dVb, dKw,
                    dq, dkPerHead, dvPerHead, dg, dbeta, dkappa, scale, H, Hkv, T);
                // a KV head's gradient is the sum over the query heads of its group
                dk = dkPerHead.view(B, Hkv, H / Hkv, T, D).sum(2);
                dv = dvPerHead.view(B, Hkv, H / Hkv, T, D).sum(2);
                foreach (var t in new[] { dq, dk, dv, dg, dbeta, dkappa, dh0 }) t.MoveToOuterDisposeScope();
            }
            if (!hasInitialState) dh0.Dispose();
            foreach (var t in saved.Concat(grads)) t?.Dispose();   // fresh wrappers on every call, ours to release
            return GradientHandoff.Return(dq, dk, dv, dg, dbeta, dkappa, hasInitialState ? dh0 : null, null, null);
        }
    }
}
