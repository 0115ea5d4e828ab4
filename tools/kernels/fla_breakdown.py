"""fla's chunk_comba kernel by kernel (run after tools/kernels/peer_slim.py in the same call, so that Triton's
autotuning is done): the device time of each kernel its forward and forward+backward launch, at the three issue-12
shapes, from torch.profiler. It says which of our kernels is behind its counterpart, not how fast fla is end to end
(peer_slim.py's do_bench is that number)."""
import os, sys
sys.path.insert(0, os.environ.get("FLA_PATH", ".peers"))
import torch
from torch.profiler import profile, ProfilerActivity
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_slim import inputs   # the same inputs as the timed peer
from fla.ops.comba import chunk_comba

REPS = 10
for (B, T, H, D) in [(8, 2048, 16, 128), (1, 8192, 32, 128), (2, 16384, 16, 128)]:
    for grad in (False, True):
        q, k, v, p, gl, beta = inputs(B, T, H, D, grad)
        def run():
            o = chunk_comba(q, k, v, p, gl, beta)[0]
            if grad: o.backward(torch.ones_like(o) * 0.01)
        for _ in range(3): run()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(REPS): run()
            torch.cuda.synchronize()
        rows = {}
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                rows.setdefault(e.name, []).append(e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total)
        total = sum(sum(v) for v in rows.values()) / REPS / 1000
        print(f"== fla ({B},{T},{H},{D}) {'fwd+bwd' if grad else 'fwd'}: {total:.3f} ms of kernels a call", flush=True)
        for name, ts in sorted(rows.items(), key=lambda kv: -sum(kv[1])):
            print(f"   {sum(ts) / REPS / 1000:8.3f} ms  x{len(ts) // REPS:<2d} {name[:110]}", flush=True)
