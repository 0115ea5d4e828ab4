#!/usr/bin/env bash
# On the GPU host (from the repository root): runs the whole test suite there, GPU lane included.
# Results: $OUT/tests.log. Extra arguments go to the xunit runner.
set -uo pipefail
export COMBADISTILL_SHARED=$PWD/.gpu/shared
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
bash .gpu/run.sh tests/CombaDistill.Tests.dll -noColor "$@" 2>&1 | tee "$OUT/tests.log" | grep -E "FAIL|SKIP|Total:|\[FAIL\]" | head -60
