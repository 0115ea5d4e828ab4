#!/usr/bin/env bash
# On the GPU host, from the repository root, after tools/gpu-pack.sh here and a device call with carry [".gpu"]:
# runs the test suite (GPU lane included), Hugging Face reference data, and the GPU benchmarks.
# Everything lands under $OUT (at most 8 files come back: logs, JSON, one tarball).
# usage: bash tools/gpu/session.sh [steps...]   steps: tests hfref bench kernel (default: tests hfref bench)
set -uo pipefail
export COMBADISTILL_SHARED=$PWD/.gpu/shared PYTHONUNBUFFERED=1
steps=${*:-tests hfref bench}
cli() { bash .gpu/run.sh tests/CombaDistill.Cli.dll "$@"; }
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
