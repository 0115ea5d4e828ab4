#!/usr/bin/env python3
"""Measuring instrument for kernels/comba_chunk.cu on the GPU host (not part of the product).

Compiles the kernel source with NVRTC (through CuPy, which the host has), runs the same launch sequence that
src/CombaDistill/Ops/FusedComba.cs runs, and compares outputs and every gradient with a float64 step-by-step
recurrence (autograd for the gradients). Then times each kernel at the benchmark shapes beside causal SDPA.

usage: python3 tools/kernels/comba_check.py [--check] [--time] [--profile] [--small] [--out DIR]
(--profile launches each bf16 kernel once at the first benchmark shape, D = 128, for a profiler such as ncu to catch.)
"""
import argparse, json, math, os, sys, time, zlib
import numpy as np
import torch
import torch.nn.functional as F
import cupy as cp

CH, NT, BV = 64, 256, 32
BF16_ONLY = bool(os.environ.get("BF16_ONLY"))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# KERNEL_SRC picks another version of the source (e.g. the v5b candidate: patch -o /tmp/v5b.cu kernels/comba_chunk.cu tools/kernels/candidates/comba_chunk_v5b.patch) to check and time
SRC = open(os.environ.get("KERNEL_SRC") or os.path.join(ROOT, "kernels", "comba_chunk.cu")).read()
# DEFINES (names separated by spaces or +) switches on candidates the source keeps behind #ifdef, e.g.
# COMBA_STAGED_STATE; with BF16_ONLY the float32 entry points are left out of the build, as FusedComba's bf16 module
# does (a quarter of the compile time)
DEFINES = (os.environ.get("DEFINES") or "").replace("+", " ").split() + (["COMBA_ONLY_BF16"] if BF16_ONLY else [])
SRC = "".join(f"#define {d}\n" for d in DEFINES) + SRC
_mod = None


def module():
    global _mod
    if _mod is None:
        t = time.time()
        _mod = cp.RawModule(code=SRC, options=("-std=c++17", "-arch=sm_90"))
        _mod.compile()
        print(f"compiled in {time.time() - t:.1f} s", flush=True)
    return _mod


MS, US, HS = CH + 4, BV + 4, BV + 4


def smem(stage, D, tag="tf32"):
    staged = {"prepare": 1, "output": 2, "dupart": 2, "local": 2}.get(stage, 0) if tag == "tf32s" else 0
    f = CH * (D + 4) * staged + {"prepare": 2 * CH * MS + 4 * CH,
         "state": D * HS + CH * US + 4 * CH,
         "output": CH * MS + 5 * CH,
         "dupart": CH * MS + 4 * CH,
         "bstate": D * HS + 2 * CH * US + 5 * CH,
         "local": 4 * CH * MS + 8 * CH + NT}[stage]
    return 4 * f


def smem_bf16(stage, D):
    SD = D + 8
    tile, state, cc, ccf, sl = 64 * SD * 2, D * SD * 2, 64 * 72 * 2, 64 * 68 * 4, 64 * 40 * 2
    if stage in ("normf", "normb"): return 0
    # fwd_prepare keeps A and then M's two bf16 copies in one region of 2·cc bytes (a source older than v6 needs this
    # file as of its own commit)
    return {"prepare": 2 * tile + 2 * cc + 4 * 64 * 4,
            "state": 2 * (2 * tile + sl) + D * 40 * 2 + sl + 2 * 64 * 4,
            "output": 3 * tile + state + cc + 2 * 64 * 4,
            "dupart": 3 * tile + cc + 2 * 64 * 4,
            "bstate": 2 * (3 * tile + sl + 64 * 32 * 4) + D * 40 * 2 + 2 * sl + 2 * 64 * 4,
            "local": 6 * tile + 2 * state + 3 * cc + ccf + (8 * 64 + 1) * 4}[stage]


NAMES = {"prepare": "fwd_prepare", "state": "fwd_state", "output": "fwd_output",
         "dupart": "bwd_dupart", "bstate": "bwd_state", "local": "bwd_local", "normf": "norm_fwd", "normb": "norm_bwd"}


def launch(stage, D, tag, grid, *args):
    fn = module().get_function(f"comba_{NAMES[stage]}_{D}_{tag}")
    sm = smem_bf16(stage, D) if tag == "bf16" else smem(stage, D, tag)
    fn.max_dynamic_shared_size_bytes = sm
    conv = []
    for a in args:
        if a is None: conv.append(np.uint64(0))
        elif isinstance(a, torch.Tensor):
            assert a.is_cuda and a.is_contiguous(), (stage, a.shape)
            conv.append(np.uint64(a.data_ptr()))
        elif isinstance(a, float): conv.append(np.float32(a))
        elif isinstance(a, np.int64): conv.append(a)
        else: conv.append(np.int32(a))
    fn(grid, (NT,), tuple(conv), shared_mem=sm)


def pad(x, Tp, dim=2):
    if x is None or x.shape[dim] == Tp: return x
    shape = list(x.shape); shape[dim] = Tp - x.shape[dim]
    return torch.cat([x, x.new_zeros(shape)], dim).contiguous()


def fused_forward(q, k, v, g, beta, kappa, h0, scale, tag):
    """All inputs float32 (bf16 callers widen first); T is padded to whole chunks here, as FusedComba does."""
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    N = (T + CH - 1) // CH
    Tp = N * CH
    q, k, v, g, beta, kappa = pad(q, Tp), pad(k, Tp), pad(v, Tp), pad(g, Tp), pad(beta, Tp), pad(kappa, Tp)
    f32 = dict(device=q.device, dtype=torch.float32)
    W = torch.empty(B * H, Tp, D, **f32); U = torch.empty_like(W); Ut = torch.empty_like(W)
    H0 = torch.empty(B * H, N, D, D, **f32); hT = torch.full((B * H, D, D), float("nan"), **f32)
    o = torch.full((B, H, Tp, D), float("nan"), **f32)
    launch("prepare", D, tag, (N, B * H), k, v, g, beta, kappa, W, U, H, Hkv, Tp)
    launch("state", D, tag, (D // BV, B * H), k, g, W, U, h0, Ut, H0, hT, H, Hkv, Tp, N)
    launch("output", D, tag, (N, B * H), q, k, g, Ut, H0, o, scale, H, Hkv, Tp)
    return o[:, :, :T], hT.view(B, H, D, D), (q, k, v, g, beta, kappa, W, U, Ut, H0)


def fused_backward(saved, dO, dhT, scale, tag):
    q, k, v, g, beta, kappa, W, U, Ut, H0 = saved
    B, H, Tp, D = q.shape
    T = dO.shape[2]
    Hkv = k.shape[1]
    N = Tp // CH
    dO = pad(dO, Tp)
    f32 = dict(device=q.device, dtype=torch.float32)
    dUp = torch.empty(B * H, Tp, D, **f32); dUt = torch.empty_like(dUp); dVb = torch.empty_like(dUp); dKw = torch.empty_like(dUp)
    dH1 = torch.empty(B * H, N, D, D, **f32); dh0 = torch.full((B * H, D, D), float("nan"), **f32)
    nan = lambda *s: torch.full(s, float("nan"), **f32)
    dq, dk, dv = nan(B, H, Tp, D), nan(B, H, Tp, D), nan(B, H, Tp, D)
    dg, db, dkap = nan(B, H, Tp), nan(B, H, Tp), nan(B, H, Tp)
    launch("dupart", D, tag, (N, B * H), q, k, g, dO, dUp, scale, H, Hkv, Tp)
    launch("bstate", D, tag, (D // BV, B * H), q, k, g, W, dO, dUp, dhT, dUt, dH1, dh0, scale, H, Hkv, Tp, N)
    launch("local", D, tag, (N, B * H), q, k, v, g, beta, kappa, W, U, Ut, H0, dH1, dUt, dO, dVb, dKw,
           dq, dk, dv, dg, db, dkap, scale, H, Hkv, Tp)
    G = H // Hkv
    t = lambda x: x[:, :, :T]
    return dict(q=t(dq), k=t(dk.view(B, Hkv, G, Tp, D).sum(2)), v=t(dv.view(B, Hkv, G, Tp, D).sum(2)),
                g=t(dg), beta=t(db), kappa=t(dkap), h0=dh0.view(B, H, D, D))


def fused_forward_bf16(q, k, v, g, beta, kappa, h0, scale):
    """q, k, v bf16 (any T; the kernels zero-fill past T), gates float32. Returns o (bf16), hT (float32), saved."""
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    N = (T + CH - 1) // CH
    Tp = N * CH
    bf = dict(device=q.device, dtype=torch.bfloat16)
    W = torch.empty(B * H, Tp, D, **bf); U = torch.empty_like(W); Ut = torch.empty_like(W)
    M = torch.empty(B * H, N, CH, CH, **bf); H0 = torch.empty(B * H, N, D, D, **bf)
    hT = torch.full((B * H, D, D), float("nan"), device=q.device)
    o = torch.full((B, H, T, D), float("nan"), **bf)
    launch("prepare", D, "bf16", (N, B * H), k, v, g, beta, kappa, W, U, M, H, Hkv, T)
    launch("state", D, "bf16", (D // BV, B * H), k, g, W, U, h0, Ut, H0, hT, H, Hkv, T, N)
    launch("output", D, "bf16", (N, B * H), q, k, g, Ut, H0, o, scale, H, Hkv, T)
    return o, hT.view(B, H, D, D), (q, k, v, g, beta, kappa, W, M, Ut, H0)


def fused_backward_bf16(saved, dO, dhT, scale, bufs=None):
    q, k, v, g, beta, kappa, W, M, Ut, H0 = saved
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    N = (T + CH - 1) // CH
    Tp = N * CH
    bf = dict(device=q.device, dtype=torch.bfloat16)
    dUp = torch.empty(B * H, Tp, D, device=q.device); dUt = torch.empty(B * H, Tp, D, **bf)
    dH1 = torch.empty_like(H0); dh0 = torch.full((B * H, D, D), float("nan"), device=q.device)
    dq = torch.full((B, H, T, D), float("nan"), **bf); dk = torch.full_like(dq, float("nan")); dv = torch.full_like(dq, float("nan"))
    nanf = lambda: torch.full((B, H, T), float("nan"), device=q.device)
    dg, db, dkap = nanf(), nanf(), nanf()
    launch("dupart", D, "bf16", (N, B * H), q, k, g, dO, dUp, scale, H, Hkv, T)
    launch("bstate", D, "bf16", (D // BV, B * H), q, k, g, W, dO, dUp, dhT, dUt, dH1, dh0, scale, H, Hkv, T, N)
    launch("local", D, "bf16", (N, B * H), q, k, v, g, beta, kappa, M, Ut, H0, dH1, dUt, dO,
           dq, dk, dv, dg, db, dkap, scale, H, Hkv, T)
    G = H // Hkv
    return dict(q=dq, k=dk.float().view(B, Hkv, G, T, D).sum(2), v=dv.float().view(B, Hkv, G, T, D).sum(2),
                g=dg, beta=db, kappa=dkap, h0=dh0.view(B, H, D, D), k_per_head=dk)


def strides(q, k):
    """the norm kernels' batch, head and time strides of q and k (in elements, 64-bit)"""
    return [np.int64(s) for s in (*q.stride()[:3], *k.stride()[:3])]


def norm_forward(q, k, d):
    """raw bf16 q (B,H,T,D), k (B,Hkv,T,D), d (H) float → q̃, k̂ (bf16) through comba_norm_fwd."""
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    qt, kh = torch.full_like(q, float("nan")), torch.full_like(k, float("nan"))
    rows = B * Hkv * T
    launch("normf", D, "bf16", ((rows + 7) // 8, 1), q, k, d, None, None, qt, kh, H, Hkv, T, rows, *strides(q, k))
    return qt, kh


def norm_backward(q, k, d, dqt, dkh):
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    dq, dk = torch.full_like(q, float("nan")), torch.full_like(k, float("nan"))
    ddp = torch.full((B, H, T), float("nan"), device=q.device)
    rows = B * Hkv * T
    launch("normb", D, "bf16", ((rows + 7) // 8, 1), q, k, d, None, None, dqt, dkh, dq, dk, ddp, H, Hkv, T, rows, *strides(q, k))
    return dq, dk, ddp.sum((0, 2))


def reference_raw(q, k, v, g, beta, kappa, d, h0, scale):
    """float64: the normalisation and the readout correction, then the recurrence."""
    G = q.shape[1] // k.shape[1]
    nrm = lambda x: x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    kh = nrm(k)
    qt = nrm(q) - (d if d.dim() == 4 else d.view(1, -1, 1, 1)) * kh.repeat_interleave(G, 1)   # d per head, or per (b, h, t)
    return reference(qt, kh, v, g, beta, kappa, h0, scale)


def reference(q, k, v, g, beta, kappa, h0, scale):
    """float64 step by step: u_t = β v_t − κ S k_t, S_t = α S + u k_tᵀ, o_t = s S_t q_t (S = hᵀ)."""
    B, H, T, D = q.shape
    G = H // k.shape[1]
    k_, v_ = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    S = h0.transpose(-1, -2) if h0 is not None else torch.zeros(B, H, D, D, dtype=q.dtype, device=q.device)
    outs = []
    for t in range(T):
        kt, vt = k_[:, :, t], v_[:, :, t]
        u = beta[..., t, None] * vt - kappa[..., t, None] * (S @ kt[..., None])[..., 0]
        S = torch.exp(g[..., t])[..., None, None] * S + u[..., None] * kt[..., None, :]
        outs.append(scale * (S @ q[:, :, t, :, None])[..., 0])
    return torch.stack(outs, 2), S.transpose(-1, -2)


def inputs(B, H, Hkv, T, D, dtype, seed, with_h0=True):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=gen)
    k = F.normalize(r(B, Hkv, T, D), dim=-1)
    q = F.normalize(r(B, H, T, D), dim=-1) - 0.5 * k.repeat_interleave(H // Hkv, 1)   # q̂ − d k̂
    v = r(B, Hkv, T, D)
    g = F.logsigmoid(r(B, H, T) * 2 + 3)            # mostly mild decay, some strong
    beta = torch.sigmoid(r(B, H, T))
    kappa = beta * torch.rand(B, H, T, device="cuda", generator=gen).clamp_min(0.05)
    h0 = r(B, H, D, D) * 0.1 if with_h0 else None
    q, k, v = q.to(dtype).contiguous(), k.to(dtype).contiguous(), v.to(dtype).contiguous()
    return q, k, v, g.contiguous(), beta.contiguous(), kappa.contiguous(), h0


def stable_seed(*case):
    """A case's seed, the same in every run (Python's hash() of a string changes from process to process, which made
    every check draw fresh inputs: a T = 1 case's dβ landed at 1.03e-2 once, over the 1e-2 bar, where other runs
    gave less)."""
    return zlib.crc32(repr(case).encode()) % 10000


def rel(a, b):
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all(): return float("nan")
    # a reference that is exactly zero (dg with T = 1 and no initial state: g multiplies a zero state) is compared
    # absolutely; 1e-4 because the bf16 path leaves ~1e-8 of rounding residue there (y_ii added and subtracted)
    return ((a - b).norm() / b.norm().clamp_min(1e-4)).item()


def check(small, tiny=False):
    cases = [(2, 4, 2, 150, 64), (1, 2, 1, 200, 128), (1, 2, 2, 70, 256), (1, 3, 3, 64, 128), (2, 2, 1, 1, 64)]
    if small: cases = cases[:2]
    if tiny: cases = [(1, 2, 1, 70, 64)]
    rows, ok = [], True
    for (B, H, Hkv, T, D) in cases:
        modes = ((torch.float32, "f32"), (torch.bfloat16, "tf32")) + (((torch.bfloat16, "tf32s"),) if D <= 128 else ())
        if BF16_ONLY: modes = ()
        if D <= 128: modes += ((torch.bfloat16, "bf16"),)
        for dtype, tag in modes:
            for with_h0 in (True, False):
                seed = stable_seed(B, H, T, D, str(dtype), with_h0)
                q, k, v, g, beta, kappa, h0 = inputs(B, H, Hkv, T, D, dtype, seed, with_h0)
                scale = 1.0 / math.sqrt(D)
                f = lambda x: x.float().contiguous()
                if tag == "bf16":
                    o, hT, saved = fused_forward_bf16(q, k, v, g, beta, kappa, h0, scale)
                else:
                    o, hT, saved = fused_forward(f(q), f(k), f(v), g, beta, kappa, h0, scale, tag)
                gen = torch.Generator(device="cuda").manual_seed(seed + 1)
                dO = torch.randn(o.shape, device="cuda", generator=gen).to(dtype)
                dhT = torch.randn(hT.shape, device="cuda", generator=gen) * 0.1
                if tag == "bf16":
                    grads = fused_backward_bf16(saved, dO.contiguous(), dhT, scale)
                else:
                    grads = fused_backward(saved, f(dO), dhT, scale, tag)
                o_f32 = o
                if dtype == torch.bfloat16: o = o.to(dtype)      # what FusedComba returns
                torch.cuda.synchronize()
                leaves = dict(q=q, k=k, v=v, g=g, beta=beta, kappa=kappa, h0=h0)
                ref_in = {n: (x.double().requires_grad_() if x is not None else None) for n, x in leaves.items()}
                ro, rh = reference(*[ref_in[n] for n in ("q", "k", "v", "g", "beta", "kappa", "h0")], scale)
                loss = (ro * dO.double()).sum() + (rh * dhT.double()).sum()
                names = [n for n in leaves if ref_in[n] is not None]
                rg = torch.autograd.grad(loss, [ref_in[n] for n in names])
                errs = {"o": rel(o, ro), "o_f32": rel(o_f32, ro), "hT": rel(hT, rh)}
                for n, x in zip(names, rg): errs["d" + n] = rel(grads[n], x)
                tol = 1e-5 if dtype == torch.float32 else (1e-2 if tag == "bf16" else 2e-3)
                worst = max(errs.values()) if all(math.isfinite(e) for e in errs.values()) else float("nan")
                good = worst <= tol
                ok &= good
                rows.append(dict(B=B, H=H, Hkv=Hkv, T=T, D=D, mode=tag, h0=with_h0, worst=worst, ok=good, **errs))
                print(f"{'ok ' if good else 'BAD'} B{B} H{H}/{Hkv} T{T} D{D} {tag:5s} h0={int(with_h0)} worst {worst:.2e}  " +
                      " ".join(f"{n}={e:.1e}" for n, e in errs.items()), flush=True)
    # the whole bf16 op from raw q, k: normalisation and readout correction in the kernels, gradients through them
    for (B, H, Hkv, T, D) in cases:
        if D > 128: continue
        for with_h0 in (True, False):
            seed = stable_seed(B, H, T, D, "raw", with_h0)
            _, _, v, g, beta, kappa, h0 = inputs(B, H, Hkv, T, D, torch.bfloat16, seed, with_h0)
            gen = torch.Generator(device="cuda").manual_seed(seed + 2)
            q = (torch.randn(B, H, T, D, device="cuda", generator=gen) * 3).to(torch.bfloat16)
            k = (torch.randn(B, Hkv, T, D, device="cuda", generator=gen) * 0.5).to(torch.bfloat16)
            d = torch.rand(H, device="cuda", generator=gen) - 0.5
            scale = 1.0 / math.sqrt(D)
            qt, kh = norm_forward(q, k, d)
            o, hT, saved = fused_forward_bf16(qt, kh, v, g, beta, kappa, h0, scale)
            dO = torch.randn(o.shape, device="cuda", generator=gen).to(torch.bfloat16)
            dhT = torch.randn(hT.shape, device="cuda", generator=gen) * 0.1
            grads = fused_backward_bf16(saved, dO, dhT, scale)
            dq, dk, dd = norm_backward(q, k, d, grads["q"], grads["k_per_head"])
            grads.update(q=dq, k=dk, d=dd)
            torch.cuda.synchronize()
            # d's reference is a leaf per (b, h, t), so that its gradient holds the terms that dd sums
            d_tok = d.double().view(1, H, 1, 1).expand(B, H, T, 1).contiguous()
            leaves = dict(q=q, k=k, v=v, g=g, beta=beta, kappa=kappa, d=d_tok, h0=h0)
            ref_in = {n: (x.double().requires_grad_() if x is not None else None) for n, x in leaves.items()}
            ro, rh = reference_raw(*[ref_in[n] for n in ("q", "k", "v", "g", "beta", "kappa", "d", "h0")], scale)
            loss = (ro * dO.double()).sum() + (rh * dhT.double()).sum()
            names = [n for n in leaves if ref_in[n] is not None]
            rg = torch.autograd.grad(loss, [ref_in[n] for n in names])
            errs = {"o": rel(o, ro), "hT": rel(hT, rh)}
            for n, x in zip(names, rg):
                if n == "d":
                    # dd is a sum of B·T terms a head, which can cancel (at T = 1, two terms): its error is measured
                    # against the size of the terms (their root sum of squares) where that exceeds the sum's
                    ref = x.sum((0, 2, 3))
                    errs["dd"] = ((grads["d"].double() - ref).norm() / torch.maximum(ref.norm(), x.norm()).clamp_min(1e-4)).item()
                else:
                    errs["d" + n] = rel(grads[n], x)
            worst = max(errs.values()) if all(math.isfinite(e) for e in errs.values()) else float("nan")
            good = worst <= 1e-2
            ok &= good
            rows.append(dict(B=B, H=H, Hkv=Hkv, T=T, D=D, mode="bf16+norm", h0=with_h0, worst=worst, ok=good, **errs))
            print(f"{'ok ' if good else 'BAD'} B{B} H{H}/{Hkv} T{T} D{D} bf16+norm h0={int(with_h0)} worst {worst:.2e}  " +
                  " ".join(f"{n}={e:.1e}" for n, e in errs.items()), flush=True)
    return ok, rows


def time_ms(fn, reps=20, warm=3):
    for _ in range(warm): fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return float(np.median(ts))


def timing(tag="tf32"):
    out = []
    for (B, T, H, D) in [(8, 2048, 16, 128), (1, 8192, 32, 128), (2, 16384, 16, 128)]:
        q, k, v, g, beta, kappa, h0 = inputs(B, H, H, T, D, torch.bfloat16, 7, with_h0=False)
        scale = 1.0 / math.sqrt(D)
        N = T // CH
        qf, kf, vf = q.float(), k.float(), v.float()
        o, hT, saved = fused_forward(qf, kf, vf, g, beta, kappa, None, scale, tag)
        _, _, _, _, _, _, W, U, Ut, H0 = saved
        dO = torch.randn_like(qf)
        of = torch.empty_like(qf)
        dUp = torch.empty_like(W); dUt = torch.empty_like(W); dVb = torch.empty_like(W); dKw = torch.empty_like(W)
        dH1 = torch.empty_like(H0); e = lambda: torch.empty_like(qf); e1 = lambda: torch.empty_like(g)
        dq, dk, dv, dg, db, dkap = e(), e(), e(), e1(), e1(), e1()
        row = dict(B=B, T=T, H=H, D=D)
        row["prepare"] = time_ms(lambda: launch("prepare", D, tag, (N, B * H), kf, vf, g, beta, kappa, W, U, H, H, T))
        row["state"] = time_ms(lambda: launch("state", D, tag, (D // BV, B * H), kf, g, W, U, None, Ut, H0, hT, H, H, T, N))
        row["output"] = time_ms(lambda: launch("output", D, tag, (N, B * H), qf, kf, g, Ut, H0, of, scale, H, H, T))
        row["dupart"] = time_ms(lambda: launch("dupart", D, tag, (N, B * H), qf, kf, g, dO, dUp, scale, H, H, T))
        row["bstate"] = time_ms(lambda: launch("bstate", D, tag, (D // BV, B * H), qf, kf, g, W, dO, dUp, None, dUt, dH1, hT, scale, H, H, T, N))
        row["local"] = time_ms(lambda: launch("local", D, tag, (N, B * H), qf, kf, vf, g, beta, kappa, W, U, Ut, H0, dH1, dUt, dO, dVb, dKw,
                                              dq, dk, dv, dg, db, dkap, scale, H, H, T))
        row["fwd"] = row["prepare"] + row["state"] + row["output"]
        row["bwd"] = row["dupart"] + row["bstate"] + row["local"]
        qs, ks, vs = q.detach().requires_grad_(), k.detach().requires_grad_(), v.detach().requires_grad_()
        row["sdpa_fwd"] = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        dOb = dO.to(q.dtype)
        def sdpa_fb():
            F.scaled_dot_product_attention(qs, ks, vs, is_causal=True).backward(dOb)
        row["sdpa_fwdbwd"] = time_ms(sdpa_fb)
        out.append(row)
        print(tag, "  ".join(f"{k_}={v_:.3f}" if isinstance(v_, float) else f"{k_}={v_}" for k_, v_ in row.items()), flush=True)
    return out


def timing_bf16(shapes=None, once=False):
    """The bf16 path per kernel and end to end (launches only, buffers allocated once), beside causal SDPA.
    once: launch each kernel one time (for a profiler) and time nothing."""
    out = []
    for (B, T, H, D) in shapes or SHAPES:
        q, k, v, g, beta, kappa, h0 = inputs(B, H, H, T, D, torch.bfloat16, 7, with_h0=False)
        scale = 1.0 / math.sqrt(D)
        N = (T + CH - 1) // CH; Tp = N * CH
        bf = dict(device="cuda", dtype=torch.bfloat16)
        W = torch.empty(B * H, Tp, D, **bf); U = torch.empty_like(W); Ut = torch.empty_like(W)
        M = torch.empty(B * H, N, CH, CH, **bf); H0 = torch.empty(B * H, N, D, D, **bf)
        hT = torch.empty(B * H, D, D, device="cuda"); o = torch.empty_like(q)
        dO = torch.randn_like(q)
        dUp = torch.empty(B * H, Tp, D, device="cuda"); dUt = torch.empty_like(W); dH1 = torch.empty_like(H0)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(q), torch.empty_like(q)
        dg, db, dkap = torch.empty_like(g), torch.empty_like(g), torch.empty_like(g)
        P = lambda: launch("prepare", D, "bf16", (N, B * H), k, v, g, beta, kappa, W, U, M, H, H, T)
        S = lambda: launch("state", D, "bf16", (D // BV, B * H), k, g, W, U, None, Ut, H0, hT, H, H, T, N)
        O = lambda: launch("output", D, "bf16", (N, B * H), q, k, g, Ut, H0, o, scale, H, H, T)
        DU = lambda: launch("dupart", D, "bf16", (N, B * H), q, k, g, dO, dUp, scale, H, H, T)
        DS = lambda: launch("bstate", D, "bf16", (D // BV, B * H), q, k, g, W, dO, dUp, None, dUt, dH1, None, scale, H, H, T, N)
        DL = lambda: launch("local", D, "bf16", (N, B * H), q, k, v, g, beta, kappa, M, Ut, H0, dH1, dUt, dO,
                            dq, dk, dv, dg, db, dkap, scale, H, H, T)
        dd = torch.rand(H, device="cuda"); qt, kh = torch.empty_like(q), torch.empty_like(k); ddp = torch.empty_like(g)
        dqr, dkr = torch.empty_like(q), torch.empty_like(k)
        rows_ = B * H * T
        NF = lambda: launch("normf", D, "bf16", ((rows_ + 7) // 8, 1), q, k, dd, None, None, qt, kh, H, H, T, rows_, *strides(q, k))
        NB = lambda: launch("normb", D, "bf16", ((rows_ + 7) // 8, 1), q, k, dd, None, None, dq, dk, dqr, dkr, ddp, H, H, T, rows_, *strides(q, k))
        if once:
            for fn in (NF, NB, P, S, O, DU, DS, DL): fn()
            torch.cuda.synchronize()
            continue
        row = dict(B=B, T=T, H=H, D=D)
        # TIME_ONLY (comma-separated row names, e.g. prepare,fwd_norm) times just those
        only = [x for x in (os.environ.get("TIME_ONLY") or "").split(",") if x]
        def put(name, fn):
            if not only or name in only: row[name] = time_ms(fn, reps=30)
        for name, fn in (("normf", NF), ("normb", NB), ("prepare", P), ("state", S), ("output", O), ("dupart", DU), ("bstate", DS), ("local", DL)):
            put(name, fn)
        put("fwd", lambda: (P(), S(), O()))
        put("fwdbwd", lambda: (P(), S(), O(), DU(), DS(), DL()))
        put("fwd_norm", lambda: (NF(), P(), S(), O()))
        put("fwdbwd_norm", lambda: (NF(), P(), S(), O(), NF(), DU(), DS(), DL(), NB()))
        # FusedComba since 612baef: q̃ and k̂ kept from the forward, so the backward runs no second norm_fwd
        put("fwdbwd_norm_kept", lambda: (NF(), P(), S(), O(), DU(), DS(), DL(), NB()))
        out.append(row)
        print("bf16", "  ".join(f"{k_}={v_:.3f}" if isinstance(v_, float) else f"{k_}={v_}" for k_, v_ in row.items()), flush=True)
    return out


SHAPES = [(8, 2048, 16, 128), (1, 8192, 32, 128), (2, 16384, 16, 128)]


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true"); ap.add_argument("--time", action="store_true")
    ap.add_argument("--profile", action="store_true", help="launch each bf16 kernel once at the first shape (PROFILE_SHAPES=0,1 for more)")
    ap.add_argument("--bf16", action="store_true", help="time only the bf16 path"); ap.add_argument("--old", action="store_true", help="also time tf32/tf32s")
    ap.add_argument("--small", action="store_true"); ap.add_argument("--tiny", action="store_true"); ap.add_argument("--out", default=os.environ.get("OUT", "/tmp"))
    a = ap.parse_args()
    res = {}
    ok = True
    if a.check:
        ok, res["check"] = check(a.small, a.tiny)
        print("CHECK", "PASSED" if ok else "FAILED", flush=True)
    if a.time:
        res["time"] = {"bf16": timing_bf16()}
        if a.old: res["time"].update({tag: timing(tag) for tag in ("tf32", "tf32s")})
    if a.profile:   # PROFILE_SHAPES: indices into SHAPES, comma-separated (the first shape by default)
        timing_bf16([SHAPES[int(i)] for i in (os.environ.get("PROFILE_SHAPES") or "0").split(",")], once=True)
    with open(os.path.join(a.out, "comba_check.json"), "w") as f: json.dump(res, f, indent=1)
    sys.exit(0 if ok else 1)
