#!/usr/bin/env bash
# On the GPU host (device call with carry [".gpu", ".peerpack"] after tools/gpu-pack.sh; .peerpack holds fla.tar.xz,
# fla's package folder packed): the one call that decides v6 (docs/kernels.md, "v6"). In order of importance, so that
# a call cut short by its time limit keeps what matters most:
#   1. the float64 check of the four-block fwd_prepare (FPREP=4) and the three-stage state passes (FSTAGES=3), with
#      p4's W, U and M compared bit for bit against the three-block kernel's   $OUT/check-p4-s3.log
#   2. every bf16 kernel timed, prepare beside prepare_4blocks and state beside state_3stages   $OUT/time.log
#   3. FusedCombaTests with both switched on through FusedComba   $OUT/lane.log
#   4. fla's chunk_comba at the three shapes (tools/kernels/peer_slim.py), Triton's cache back in $OUT/triton-cache.tar
#      (put it in .peerpack to spare the next call the builds)   $OUT/peer-slim.log
#   5. the three #ifdef candidates timed (normf, prepare_4blocks, output, fwd_norm_4blocks), then the two that give the
#      default's bits (COMBA_STAGED_OUT, COMBA_NORM_PREFETCH) checked together   $OUT/check-candidates.log
# usage: timeout 580 bash tools/gpu/kernels-v6.sh
source tools/gpu/common.sh
export BF16_ONLY=1
C=tools/kernels/comba_check.py
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/machine.txt"
SECONDS=0
step() { echo "== $1 ($SECONDS s)"; }
step "check: four-block prepare, three-stage state passes"
FPREP=4 FSTAGES=3 timeout 110 python3 $C --check > "$OUT/check-p4-s3.log" 2>&1
grep -E "BAD|CHECK|Error|compiled|p4" "$OUT/check-p4-s3.log" | cut -c1-200 | head -20
step "time"
timeout 110 python3 $C --time > "$OUT/time.log" 2>&1
grep -E "^bf16|Error" "$OUT/time.log" | cut -c1-900
step "FusedCombaTests, both switched on"
(COMBADISTILL_COMBA_PREPARE_BLOCKS=4 COMBADISTILL_COMBA_STATE_STAGES=3 timeout 90 bash .gpu/run.sh tests/CombaDistill.Tests.dll \
   -noColor -parallel none -class CombaDistill.Tests.Ops.FusedCombaTests > "$OUT/lane.log" 2>&1)
grep -E "\[FAIL\]|Total:" "$OUT/lane.log"
step "fla chunk_comba"
fla_kernels 150
for d in COMBA_STAGED_OUT COMBA_INV_QUARTERS COMBA_NORM_PREFETCH; do
  step "time with $d"
  DEFINES=$d TIME_ONLY=normf,prepare_4blocks,output,fwd_norm_4blocks timeout 50 python3 $C --time > "$OUT/time-$d.log" 2>&1
  grep -E "^bf16|Error" "$OUT/time-$d.log" | cut -c1-300
done
step "check with COMBA_STAGED_OUT and COMBA_NORM_PREFETCH"
FPREP=4 DEFINES="COMBA_STAGED_OUT COMBA_NORM_PREFETCH" timeout 100 python3 $C --check > "$OUT/check-candidates.log" 2>&1
grep -E "BAD|CHECK|Error|p4" "$OUT/check-candidates.log" | cut -c1-200 | head
step "done"
