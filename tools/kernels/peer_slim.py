"""Slim peer for one device call: fla's chunk_comba only, the three issue-12 shapes, forward and forward+backward,
with peer_bench.py's inputs and its timing (triton do_bench, median, warmup 50 ms, rep 300 ms)."""
import json, os, sys
sys.path.insert(0, os.environ.get("FLA_PATH", ".peers"))
import torch, torch.nn.functional as F
import triton
from fla.ops.comba import chunk_comba
import fla.ops.common.chunk_o as _fla_chunk_o
_fla_chunk_o.IS_NVIDIA_HOPPER = False   # as peer_bench.py: timing only
dev, dt = "cuda", torch.bfloat16

def inputs(B, T, H, D, grad):
    g = torch.Generator(device=dev).manual_seed(B * T + H)
    r = lambda *s: torch.randn(*s, device=dev, dtype=dt, generator=g)
    q, k, v = r(B, T, H, D), F.normalize(r(B, T, H, D), dim=-1), r(B, T, H, D)
    p = k * torch.rand(H, device=dev, dtype=dt, generator=g).sigmoid()[:, None]
    beta = torch.rand(B, T, H, device=dev, dtype=dt, generator=g).sigmoid()
    gl = F.logsigmoid(torch.rand(B, T, H, device=dev, dtype=torch.float32, generator=g)).to(dt)
    ts = [q, k, v, p, gl, beta]
    return [t.detach().requires_grad_(True) for t in ts] if grad else ts

def bench(fn, grad, leaves=None):
    """leaves: with GRAD_TO_NONE=1, their .grad is cleared before each repeat (do_bench's grad_to_none), so the backward
    writes its gradients instead of adding them to the last repeat's, as a training step after zero_grad does.
    peer_bench.py does not clear them, so by default neither does this."""
    def run():
        o = fn()
        if grad: o.backward(torch.ones_like(o) * 0.01)
    clear = leaves if grad and os.environ.get("GRAD_TO_NONE") == "1" else None
    return triton.testing.do_bench(run, warmup=50, rep=300, return_mode="median", grad_to_none=clear)

if __name__ == "__main__":
    rows = []
    for (B, T, H, D) in [(8, 2048, 16, 128), (1, 8192, 32, 128), (2, 16384, 16, 128)]:
        for grad in (False, True):
            q, k, v, p, gl, beta = inputs(B, T, H, D, grad)
            ms = bench(lambda: chunk_comba(q, k, v, p, gl, beta)[0], grad, [q, k, v, p, gl, beta])
            rows.append(dict(B=B, T=T, H=H, D=D, mode="fwd+bwd" if grad else "fwd", fla_comba_ms=ms,
                             grads_cleared=grad and os.environ.get("GRAD_TO_NONE") == "1"))
            print(json.dumps(rows[-1]), flush=True)
    if os.environ.get("OUT"): json.dump(rows, open(os.path.join(os.environ["OUT"], "peer_slim.json"), "w"), indent=1)
