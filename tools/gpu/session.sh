#!/usr/bin/env bash
# On the GPU host, from the repository root, after tools/gpu-pack.sh here and a device call with carry [".gpu"]:
# runs the test suite (GPU lane included), Hugging Face reference data, and the GPU benchmarks.
# Everything lands under $OUT (at most 8 files come back: logs, JSON, one tarball).
# usage: bash tools/gpu/session.sh [steps...]   steps: tests hfref bench kernel distill (default: tests hfref bench)
#   distill: `bench distill` on a Llama-3.2-1B-shaped synthetic teacher (SEQ=2048 MICRO=4 STEPS=10 by default):
#   stage-1 (alignment) and stage-2 (KL) tokens/s, peak GPU memory, and the shares of the teacher and the Comba op
set -uo pipefail
source tools/gpu/common.sh
steps=${*:-tests hfref bench}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader > "$OUT/machine.txt"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)' >> "$OUT/machine.txt"
nproc >> "$OUT/machine.txt"; cat "$OUT/machine.txt"

if [[ $steps == *hfref* ]]; then
  echo "== hfref"
  cli import --from .gpu/shared/models/stories260K/stories260K.bin --tokenizer .gpu/shared/models/stories260K/tok512.bin --out /tmp/s260 --force --device cpu 2>&1 | tail -2
  mkdir -p /tmp/hfref
  python3 tools/hf_reference.py --out /tmp/hfref --stories260k /tmp/s260 2>&1 | tail -5
  python3 - <<'PY' 2>&1 | tail -3
from transformers import AutoTokenizer
try:
    t = AutoTokenizer.from_pretrained("/tmp/s260")
    print("HF tokenizer on our tokenizer.model:", t.encode("Once upon a time"))
except Exception as e:
    print("HF tokenizer failed:", type(e).__name__, str(e)[:200])
PY
  tar czf "$OUT/hfref.tgz" -C /tmp/hfref .
fi

if [[ $steps == *tests* ]]; then
  echo "== tests"
  bash .gpu/run.sh tests/CombaDistill.Tests.dll -noColor > "$OUT/tests.log" 2>&1
  grep -E "\[FAIL\]|\[SKIP\]|Total:" "$OUT/tests.log" | head -40
fi

if [[ $steps == *kernel* ]]; then
  echo "== bench kernel"
  cli bench kernel --device cuda --json "$OUT/bench-kernel.json" 2>&1 | tail -30
fi

if [[ $steps == *bench* ]]; then
  echo "== bench comba"
  cli bench comba --device cuda --json "$OUT/bench-comba-cuda.json" 2>&1 | tail -30
fi

if [[ $steps == *distill* ]]; then
  echo "== bench distill (Llama-3.2-1B-shaped synthetic teacher)"
  SEQ=${SEQ:-2048} MICRO=${MICRO:-4} STEPS=${STEPS:-10}
  teacher_and_student
  recipe auto "$SEQ" "$MICRO" \
    "{ name: align, objective: attention_alignment, trainable: comba, optimizer: { lr: 1e-3 }, steps: 100, sequence_length: $SEQ, micro_batch: $MICRO }" \
    "{ name: kd, objective: distillation, trainable: all, optimizer: { lr: 1e-5 }, steps: 100, sequence_length: $SEQ, micro_batch: $MICRO, kl_weight: 1.0, loss_chunk: 128 }" \
    > "$work/recipe.yaml"
  cli bench distill --recipe "$work/recipe.yaml" --device cuda --steps "$STEPS" --warmup 2 --json "$OUT/bench-distill.json" 2>&1 | tail -30
fi
