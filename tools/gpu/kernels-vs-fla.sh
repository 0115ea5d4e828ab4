#!/usr/bin/env bash
# On the GPU host (device call with carry [".gpu", ".peerpack"] after tools/gpu-pack.sh; .peerpack holds fla.tar.xz,
# fla's package folder packed, and optionally triton-cache.tar.xz from an earlier call): our bf16 kernels against fla's
# chunk_comba in one call. The steps run in the order ORDER gives (space-separated names; by default the order of
# importance below), so that a call cut short by its time limit keeps what matters most:
#   check      the float64 check of every bf16 kernel (tools/kernels/comba_check.py --check)
#   bench      `bench kernel` in bf16: our op through FusedComba, what a user's model calls
#   fla        fla's chunk_comba at the three shapes (tools/kernels/peer_slim.py, FLA_TIMEOUT s, 240 by default;
#              Triton's cache comes back in $OUT/triton-cache.tar.xz.part-*); GRAD_TO_NONE=1 clears the inputs'
#              gradients between repeats (peer_bench.py does not)
#   breakdown  fla's kernels one by one (tools/kernels/fla_breakdown.py, torch.profiler); after fla, whose
#              Triton cache it uses
#   lane       the C# lane's FusedCombaTests
#   time       every bf16 kernel timed alone, and the forward and forward+backward sequences
#   defines    each candidate DEFINES_TIMED names (space-separated #ifdef names, none by default; A+B compiles A and B
#              together) timed on the rows
#              DEFINES_TIME_ONLY names (prepare,fwd_norm by default), with the default build beside them unless the
#              time step ran earlier in the call
#   checkdefines  the float64 check with each of DEFINES_CHECKED's builds (DEFINES_TIMED's by default) compiled in
#   profile    (not in the default order) Nsight Compute on the kernels NCU_KERNELS names, source counters on
#              (tools/gpu/profile-kernels.sh: PROFILE_SHAPES, NCU_LAUNCHES, STALLS): $OUT/ncu.txt and $OUT/ptxas.txt;
#              PROFILE_DEFINES (A+B as above) profiles a candidate build instead of the default
# Logs: $OUT/logs.tar (refreshed after every step; $OUT brings back at most 8 files).
# usage: timeout 580 bash tools/gpu/kernels-vs-fla.sh
source tools/gpu/common.sh
export BF16_ONLY=1
C=tools/kernels/comba_check.py L=/tmp/logs
mkdir -p $L
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$L/machine.txt"
SECONDS=0
step() { tar -cf "$OUT/logs.tar" -C $L .; echo "== $1 ($SECONDS s)"; }
run_check() {
  timeout 120 python3 $C --check --out $L > "$L/check.log" 2>&1
  grep -E "BAD|CHECK|Error|compiled" "$L/check.log" | cut -c1-200 | head -20
}
run_bench() {
  cli bench kernel --device cuda --ops fused --json "$L/bench-kernel-bf16.json" > "$L/bench-kernel.log" 2>&1
  tail -12 "$L/bench-kernel.log"
}
run_fla() {
  fla_kernels "${FLA_TIMEOUT:-240}"
  mv "$OUT/peer-slim.log" $L/; mv "$OUT/peer_slim.json" $L/ 2>/dev/null
}
run_breakdown() {
  unpack_peers
  export TRITON_CACHE_DIR=/tmp/triton-cache TRITON_CACHE_AUTOTUNING=1   # fla's step's cache, if it ran
  (cd $peers && FLA_PATH=$PWD timeout 120 python3 "$OLDPWD/tools/kernels/fla_breakdown.py") > "$L/fla-breakdown.log" 2>&1
  grep -A3 "^==" "$L/fla-breakdown.log" | cut -c1-150 | head -40
}
run_lane() {
  timeout 120 bash .gpu/run.sh tests/CombaDistill.Tests.dll -noColor -parallel none -class CombaDistill.Tests.Ops.FusedCombaTests > "$L/lane.log" 2>&1
  grep -E "\[FAIL\]|relative error|Total:" "$L/lane.log" | head
}
run_time() {
  timeout 120 python3 $C --time --out $L > "$L/time.log" 2>&1
  grep -E "^bf16|Error" "$L/time.log" | cut -c1-700
}
run_defines() {
  # "": the default build, timed beside them, unless the time step has already timed it in this call
  local builds=("" ${DEFINES_TIMED-})
  grep -q "^bf16" "$L/time.log" 2>/dev/null && builds=(${DEFINES_TIMED-}) && echo "-- the default build: the time step's rows"
  for d in "${builds[@]}"; do
    echo "-- $d"
    DEFINES=$d TIME_ONLY=${DEFINES_TIME_ONLY:-prepare,fwd_norm} timeout 90 python3 $C --time --out /tmp > "$L/time-${d:-default}.log" 2>&1
    grep -E "^bf16|Error" "$L/time-${d:-default}.log" | cut -c1-300
  done
}
run_checkdefines() {
  for d in ${DEFINES_CHECKED-${DEFINES_TIMED-}}; do
    echo "-- $d"
    DEFINES=$d timeout 120 python3 $C --check --out /tmp > "$L/check-$d.log" 2>&1
    grep -E "BAD|CHECK|Error" "$L/check-$d.log" | cut -c1-200 | head -12
  done
}
run_profile() {
  DEFINES=${PROFILE_DEFINES:-} SOURCE=1 NCU_TIMEOUT=${NCU_TIMEOUT:-150} bash tools/gpu/profile-kernels.sh > "$L/profile.log" 2>&1
  tail -40 "$L/profile.log" | cut -c1-200
}
order=${ORDER:-check bench fla breakdown lane time defines}
for s in $order; do declare -F "run_$s" > /dev/null || { echo "ORDER: no step '$s'" >&2; exit 2; }; done
for s in $order; do
  step "$s"
  "run_$s"
done
step "done"
