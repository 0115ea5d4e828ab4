#!/usr/bin/env bash
# On a host with 2+ GPUs, from the repository root, after tools/gpu-pack.sh here and a device call with carry [".gpu"]
# (kind nvidia-h200-x2): the multi-GPU test lane, then stage-2 (KL) distillation of a Llama-3.2-1B-shaped teacher with
# random weights, on one GPU and data-parallel on two with the same global batch and seed. Prints both loss curves
# side by side, the largest relative difference, tokens/s of each and the speed-up; writes $OUT/multi-gpu.json.
#
# usage: bash tools/gpu/multi-gpu.sh [tests] [bench]          (default: both)
# knobs (environment): STEPS=50 SEQ=512 MICRO=4 ACCUM=2 (global batch MICRO×ACCUM sequences of SEQ tokens;
#   two GPUs run ACCUM/2 micro-batches of MICRO each), SHAPE="--hidden 2048 --layers 16 --heads 32 --kv-heads 8
#   --intermediate 8192 --vocab 128256" (synth's defaults are Llama-3.2-1B's).
set -uo pipefail
export COMBADISTILL_SHARED=${COMBADISTILL_SHARED:-$PWD/.gpu/shared} PYTHONUNBUFFERED=1
# NVLink multicast stays off on shared hosts (the launcher sets these for its workers too, unless already set).
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0} TORCH_SYMM_MEM_DISABLE_MULTICAST=${TORCH_SYMM_MEM_DISABLE_MULTICAST:-1} NVSHMEM_DISABLE_NVLS=${NVSHMEM_DISABLE_NVLS:-1}
OUT=${OUT:-/tmp/multi-gpu-out}; mkdir -p "$OUT"
steps=${*:-tests bench}
STEPS=${STEPS:-50} SEQ=${SEQ:-512} MICRO=${MICRO:-4} ACCUM=${ACCUM:-2}
SHAPE=${SHAPE:-}
work=/tmp/multi-gpu; rm -rf "$work"; mkdir -p "$work"
[[ -d .gpu/tests || ! -f .gpu/tests.tar.xz ]] || tar -xJf .gpu/tests.tar.xz -C .gpu   # tools/gpu-pack.sh sends the builds as one archive
cli() { bash .gpu/run.sh tests/CombaDistill.Cli.dll "$@"; }
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader | tee "$work/gpus.txt"
(( $(wc -l < "$work/gpus.txt") >= 2 )) || echo "warning: fewer than 2 GPUs; the two-GPU tests skip and the bench cannot run --gpus 2"

if [[ $steps == *tests* ]]; then
  echo "== multi-GPU tests"
  bash .gpu/run.sh tests/CombaDistill.Tests.dll -noColor \
    -class CombaDistill.Tests.Runtime.NcclGpuTests -class CombaDistill.Tests.Distillation.DataParallelGpuTests \
    -class CombaDistill.Tests.Runtime.TcpProcessGroupTests -class CombaDistill.Tests.Modeling.LayerPlacementTests \
    > "$OUT/multi-gpu-tests.log" 2>&1
  grep -E "\[FAIL\]|\[SKIP\]|Total:" "$OUT/multi-gpu-tests.log" | head -20
fi

if [[ $steps == *bench* ]]; then
  echo "== synthetic Llama-3.2-1B-shaped teacher"
  log=$OUT/multi-gpu-runs.log; : > "$log"
  t0=$SECONDS
  # shellcheck disable=SC2086
  cli synth --out "$work/teacher" --device cuda:0 $SHAPE >> "$log" 2>&1 || { tail -5 "$log"; exit 1; }
  cli convert --from "$work/teacher" --out "$work/student" --device cpu >> "$log" 2>&1 || { tail -5 "$log"; exit 1; }
  echo "teacher and student ready in $((SECONDS - t0)) s"
  cat > "$work/recipe.yaml" <<EOF
seed: 7
teacher: { path: $work/teacher }
student: { path: $work/student }
data:
  train: { path: $COMBADISTILL_SHARED/data/tinyshakespeare/input.txt, max_tokens: $(( (STEPS + 2) * MICRO * ACCUM * (SEQ + 1) )) }
  validation: { path: $COMBADISTILL_SHARED/data/tinystories-valid-head/tinystories_val.txt, max_tokens: $(( 4 * SEQ + 1 )) }
  eval_tokens: $(( 2 * SEQ ))
stages:
  - name: kd
    objective: distillation
    trainable: all
    optimizer: { lr: 3e-4, weight_decay: 0.0 }
    schedule: { kind: constant, warmup_steps: 5 }
    steps: $STEPS
    sequence_length: $SEQ
    micro_batch: $MICRO
    accumulation: $ACCUM
    temperature: 1.0
    kl_weight: 1.0
    loss_chunk: 128
    log_every: 1
    eval_every: 100000
    checkpoint_every: 100000
EOF
  for n in 1 2; do
    echo "== distill on $n GPU(s): $STEPS steps of $((MICRO * ACCUM)) × $SEQ tokens"
    t0=$SECONDS
    cli distill --recipe "$work/recipe.yaml" --run-dir "$work/run-$n" --gpus $n --no-tensorboard >> "$log" 2>&1
    code=$?
    echo "exit $code after $((SECONDS - t0)) s"
    (( code == 0 )) || { tail -20 "$log"; }
    echo "$((SECONDS - t0))" > "$work/wall-$n"
  done
  python3 - "$work" "$OUT/multi-gpu.json" <<'PY'
import json, sys, os
work, out = sys.argv[1], sys.argv[2]
def train(n):
    path = f"{work}/run-{n}/01-kd/metrics.jsonl"
    if not os.path.exists(path): return []
    return [json.loads(l) for l in open(path) if '"kind":"train"' in l]
one, two = train(1), train(2)
def speed(rows):
    # steady state: from step 5 on (compilation, allocator warm-up and the first evaluation excluded)
    rows = [r for r in rows if r["step"] >= 5]
    if len(rows) < 2: return None
    return (rows[-1]["tokens"] - rows[0]["tokens"]) / (rows[-1]["elapsed_seconds"] - rows[0]["elapsed_seconds"])
print(f"{'step':>5} {'loss, 1 GPU':>14} {'loss, 2 GPUs':>14} {'rel. diff':>10}")
worst = 0.0
for a, b in zip(one, two):
    rel = abs(a["loss"] - b["loss"]) / abs(a["loss"])
    worst = max(worst, rel)
    print(f"{a['step']:>5} {a['loss']:>14.7f} {b['loss']:>14.7f} {rel:>10.2e}")
s1, s2 = speed(one), speed(two)
wall = {n: int(open(f"{work}/wall-{n}").read()) if os.path.exists(f"{work}/wall-{n}") else None for n in (1, 2)}
teacher = json.load(open(f"{work}/teacher/config.json"))
result = {
    "teacher": {k: teacher[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size")},
    "steps": len(one), "tokens_per_step": one[0]["tokens"] if one else None,
    "one_gpu": {"loss": [r["loss"] for r in one], "tokens_per_second": s1, "wall_seconds": wall[1]},
    "two_gpus": {"loss": [r["loss"] for r in two], "tokens_per_second": s2, "wall_seconds": wall[2]},
    "max_relative_loss_difference": worst if one and len(one) == len(two) else None,
    "speedup": s2 / s1 if s1 and s2 else None,
}
json.dump(result, open(out, "w"), indent=1)
print(f"steps compared: {min(len(one), len(two))}; max relative loss difference {worst:.2e}")
print(f"tokens/s: 1 GPU {s1 or float('nan'):,.0f}, 2 GPUs {s2 or float('nan'):,.0f}; speed-up {result['speedup'] or float('nan'):.2f}x")
print(f"wall seconds (process start to exit): 1 GPU {wall[1]}, 2 GPUs {wall[2]}")
PY
fi
