#!/usr/bin/env python3
"""Measuring instrument for kernels/comba_chunk.cu on the GPU host (not part of the product).

Compiles the kernel source with NVRTC (through CuPy, which the host has), runs the same launch sequence that
src/CombaDistill/Ops/FusedComba.cs runs, and compares outputs and every gradient with a float64 step-by-step
recurrence (autograd for the gradients). Then times each kernel at the benchmark shapes beside causal SDPA.

usage: python3 tools/kernels/comba_check.py [--check] [--time] [--small] [--out DIR]
"""
import argparse, json, math, os, sys, time
import numpy as np
import torch
import torch.nn.functional as F
import cupy as cp

CH, NT, BV = 64, 256, 32
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SRC = open(os.path.join(ROOT, "kernels", "comba_chunk.cu")).read()
_mod = None


def module():
    global _mod
    if _mod is None:
        t = time.time()
        _mod = cp.RawModule(code=SRC, options=("-std=c++17", "-arch=sm_90"))
        _mod.compile()
        print(f"compiled in {time.time() - t:.1f} s", flush=True)
    return _mod


def smem(stage, D):
    f = {"prepare": 2 * CH * (D + 1) + 2 * CH * (CH + 1) + 5 * CH,
         "state": D * BV + 2 * CH * (D + 1) + CH * (BV + 1) + 4 * CH,
         "output": 2 * CH * (D + 1) + CH * (CH + 1) + 4 * CH,
         "dupart": 2 * CH * (D + 1) + CH * (CH + 1) + 4 * CH,
         "bstate": D * BV + 2 * CH * (D + 1) + 2 * CH * (BV + 1) + 4 * CH,
         "local": 2 * CH * (D + 1) + 4 * CH * (CH + 1) + 8 * CH + NT}[stage]
    return 4 * f


NAMES = {"prepare": "fwd_prepare", "state": "fwd_state", "output": "fwd_output",
         "dupart": "bwd_dupart", "bstate": "bwd_state", "local": "bwd_local"}


def launch(stage, D, tag, grid, *args):
    fn = module().get_function(f"comba_{NAMES[stage]}_{D}_{tag}")
    sm = smem(stage, D)
    fn.max_dynamic_shared_size_bytes = sm
    conv = []
    for a in args:
        if a is None: conv.append(np.uint64(0))
        elif isinstance(a, torch.Tensor):
            assert a.is_cuda and a.is_contiguous(), (stage, a.shape)
            conv.append(np.uint64(a.data_ptr()))
        elif isinstance(a, float): conv.append(np.float32(a))
        else: conv.append(np.int32(a))
    fn(grid, (NT,), tuple(conv), shared_mem=sm)


def tag_of(x): return {torch.float32: "f32", torch.bfloat16: "bf16"}[x.dtype]


def fused_forward(q, k, v, g, beta, kappa, h0, scale):
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    N = (T + CH - 1) // CH
    Tp = N * CH
    dev, tag = q.device, tag_of(q)
    f32 = dict(device=dev, dtype=torch.float32)
    W = torch.empty(B * H, Tp, D, **f32); U = torch.empty_like(W); Ut = torch.empty_like(W)
    H0 = torch.empty(B * H, N, D, D, **f32); hT = torch.empty(B * H, D, D, **f32)
    o = torch.full_like(q, float("nan"))
    launch("prepare", D, tag, (N, B * H), k, v, g, beta, kappa, W, U, H, Hkv, T)
    launch("state", D, tag, (D // BV, B * H), k, g, W, U, h0, Ut, H0, hT, H, Hkv, T, N)
    launch("output", D, tag, (N, B * H), q, k, g, Ut, H0, o, scale, H, Hkv, T)
    return o, hT.view(B, H, D, D), (W, U, Ut, H0)


def fused_backward(q, k, v, g, beta, kappa, saved, dO, dhT, scale):
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    N = (T + CH - 1) // CH
    Tp = N * CH
    W, U, Ut, H0 = saved
    dev, tag = q.device, tag_of(q)
    f32 = dict(device=dev, dtype=torch.float32)
    dUp = torch.empty(B * H, Tp, D, **f32); dUt = torch.empty_like(dUp); dVb = torch.empty_like(dUp); dKw = torch.empty_like(dUp)
    dH1 = torch.empty(B * H, N, D, D, **f32); dh0 = torch.full((B * H, D, D), float("nan"), **f32)
    nan = lambda *s: torch.full(s, float("nan"), **f32)
    dq, dk, dv = nan(B, H, T, D), nan(B, H, T, D), nan(B, H, T, D)
    dg, db, dkap = nan(B, H, T), nan(B, H, T), nan(B, H, T)
    launch("dupart", D, tag, (N, B * H), q, k, g, dO, dUp, scale, H, Hkv, T)
    launch("bstate", D, tag, (D // BV, B * H), q, k, g, W, dO, dUp, dhT, dUt, dH1, dh0, scale, H, Hkv, T, N)
    launch("local", D, tag, (N, B * H), q, k, v, g, beta, kappa, W, U, Ut, H0, dH1, dUt, dO, dVb, dKw,
           dq, dk, dv, dg, db, dkap, scale, H, Hkv, T)
    G = H // Hkv
    return dict(q=dq, k=dk.view(B, Hkv, G, T, D).sum(2), v=dv.view(B, Hkv, G, T, D).sum(2),
                g=dg, beta=db, kappa=dkap, h0=dh0.view(B, H, D, D))


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


def rel(a, b):
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all(): return float("nan")
    # a reference that is exactly zero (dg with T = 1 and no initial state) is compared absolutely
    return ((a - b).norm() / b.norm().clamp_min(1e-6)).item()


def check(small):
    cases = [(2, 4, 2, 150, 64), (1, 2, 1, 200, 128), (1, 2, 2, 70, 256), (1, 3, 3, 64, 128), (2, 2, 1, 1, 64)]
    if small: cases = cases[:2]
    rows, ok = [], True
    for (B, H, Hkv, T, D) in cases:
        for dtype in (torch.float32, torch.bfloat16):
            for with_h0 in (True, False):
                seed = hash((B, H, T, D, str(dtype), with_h0)) % 10000
                q, k, v, g, beta, kappa, h0 = inputs(B, H, Hkv, T, D, dtype, seed, with_h0)
                scale = 1.0 / math.sqrt(D)
                o, hT, saved = fused_forward(q, k, v, g, beta, kappa, h0, scale)
                gen = torch.Generator(device="cuda").manual_seed(seed + 1)
                dO = torch.randn(o.shape, device="cuda", generator=gen).to(dtype)
                dhT = torch.randn(hT.shape, device="cuda", generator=gen) * 0.1
                grads = fused_backward(q, k, v, g, beta, kappa, saved, dO, dhT, scale)
                torch.cuda.synchronize()
                leaves = dict(q=q, k=k, v=v, g=g, beta=beta, kappa=kappa, h0=h0)
                ref_in = {n: (x.double().requires_grad_() if x is not None else None) for n, x in leaves.items()}
                ro, rh = reference(*[ref_in[n] for n in ("q", "k", "v", "g", "beta", "kappa", "h0")], scale)
                loss = (ro * dO.double()).sum() + (rh * dhT.double()).sum()
                names = [n for n in leaves if ref_in[n] is not None]
                rg = torch.autograd.grad(loss, [ref_in[n] for n in names])
                errs = {"o": rel(o, ro), "hT": rel(hT, rh)}
                for n, x in zip(names, rg): errs["d" + n] = rel(grads[n], x)
                tol = 1e-5 if dtype == torch.float32 else 2e-3
                worst = max(errs.values()) if all(math.isfinite(e) for e in errs.values()) else float("nan")
                good = worst <= tol
                ok &= good
                rows.append(dict(B=B, H=H, Hkv=Hkv, T=T, D=D, dtype=str(dtype).split(".")[1], h0=with_h0, worst=worst, ok=good, **errs))
                print(f"{'ok ' if good else 'BAD'} B{B} H{H}/{Hkv} T{T} D{D} {str(dtype)[6:]:8s} h0={int(with_h0)} worst {worst:.2e}  " +
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


def timing():
    out = []
    for (B, T, H, D) in [(8, 2048, 16, 128), (1, 8192, 32, 128), (2, 16384, 16, 128)]:
        q, k, v, g, beta, kappa, h0 = inputs(B, H, H, T, D, torch.bfloat16, 7, with_h0=False)
        scale = 1.0 / math.sqrt(D)
        N = (T + CH - 1) // CH; Tp = N * CH
        o, hT, saved = fused_forward(q, k, v, g, beta, kappa, None, scale)
        W, U, Ut, H0 = saved
        dO = torch.randn_like(q)
        row = dict(B=B, T=T, H=H, D=D)
        row["prepare"] = time_ms(lambda: launch("prepare", D, "bf16", (N, B * H), k, v, g, beta, kappa, W, U, H, H, T))
        row["state"] = time_ms(lambda: launch("state", D, "bf16", (D // BV, B * H), k, g, W, U, None, Ut, H0, hT, H, H, T, N))
        row["output"] = time_ms(lambda: launch("output", D, "bf16", (N, B * H), q, k, g, Ut, H0, o, scale, H, H, T))
        row["fwd"] = time_ms(lambda: fused_forward(q, k, v, g, beta, kappa, None, scale))
        row["bwd"] = time_ms(lambda: fused_backward(q, k, v, g, beta, kappa, saved, dO, None, scale), reps=5, warm=1)
        qs, ks, vs = q.detach().requires_grad_(), k.detach().requires_grad_(), v.detach().requires_grad_()
        row["sdpa_fwd"] = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        def sdpa_fb():
            F.scaled_dot_product_attention(qs, ks, vs, is_causal=True).backward(dO)
        row["sdpa_fwdbwd"] = time_ms(sdpa_fb)
        out.append(row)
        print("  ".join(f"{k_}={v_:.3f}" if isinstance(v_, float) else f"{k_}={v_}" for k_, v_ in row.items()), flush=True)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true"); ap.add_argument("--time", action="store_true")
    ap.add_argument("--small", action="store_true"); ap.add_argument("--out", default=os.environ.get("OUT", "/tmp"))
    a = ap.parse_args()
    res = {}
    ok = True
    if a.check:
        ok, res["check"] = check(a.small)
        print("CHECK", "PASSED" if ok else "FAILED", flush=True)
    if a.time:
        res["time"] = timing()
    with open(os.path.join(a.out, "comba_check.json"), "w") as f: json.dump(res, f, indent=1)
    sys.exit(0 if ok else 1)
