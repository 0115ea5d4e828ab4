#!/usr/bin/env bash
# On the GPU host (after tools/gpu-pack.sh here; device call with carry [".gpu", ".peerpack"], where .peerpack holds
# fla.tar.xz (the folder fla of flash-linear-attention, packed) and the peer scripts):
#   speed    the peer (.peers/peer_distill.py: PyTorch + transformers + fla, bf16 autocast) and `bench distill`
#            (recipe precision bf16), back to back on this GPU at the Llama-3.2-1B shape, SEQ × MICRO (2048 × 4)
#   quality  KD_STEPS (200) KL steps at the 1B shape (sequence 512 × micro-batch 2) in bf16 and in float32 from the
#            same converted student: the two loss curves, $OUT/kd-bf16.jsonl and $OUT/kd-float32.jsonl
#   stories  recipes/stories260k.yaml on this GPU (precision auto = bf16): $OUT/stories260k-summary.json
#   kernels  ours through `bench kernel` in bf16, then the peer's kernel (fla chunk_comba, timed as peer_bench.py does,
#            by tools/kernels/peer_slim.py, PEER_TIMEOUT s, 240 by default), back to back; with KERNEL_SRC set, also that kernel source checked
#            against the float64 recurrence and timed by tools/kernels/comba_check.py; with PROFILE=1, Nsight Compute on
#            the kernels NCU_KERNELS names (fwd_prepare_128_bf16 by default, tools/gpu/profile-kernels.sh): $OUT/ncu.txt.
#            (tools/gpu/kernels-vs-fla.sh is the fuller kernel call: check, timing, FusedComba, fla, lane.)
#   lane     the C# GPU test lane (the classes with tests that need CUDA, NCCL's aside)
# usage: bash tools/gpu/distill-vs-peer.sh [speed] [quality] [stories] [kernels] [lane]
# PEER=0 leaves the peers out of speed and kernels (when a call has no time for them; compare only within one call);
# TENSOR_LOSS=1 adds a speed run with the logit loss as tensor ops (COMBADISTILL_FUSED_LOGIT_LOSS=0; the kernel is the default);
# UNFUSED=1 adds one without the short-convolution and gradient-norm kernels (both on by default);
# WIDE_CONV=1 adds one with the eight-channel short-convolution kernels (COMBADISTILL_SHORT_CONV_WIDE=1, off by default);
# CANDIDATES=1 adds one with every kernel still off by default (those and the fused RMSNorm, COMBADISTILL_FUSED_RMSNORM=1)
set -uo pipefail
source tools/gpu/common.sh
steps=${*:-speed}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
SEQ=${SEQ:-2048} MICRO=${MICRO:-4}


if [[ $steps == *speed* ]]; then
  if [[ ${PEER:-1} != 0 ]]; then
    echo "== peer_distill.py (SEQ=$SEQ MICRO=$MICRO)"
    unpack_peers
    (cd $peers && FLA_PATH=$PWD SEQ=$SEQ MICRO=$MICRO OUT=$OUT timeout 300 python3 peer_distill.py) 2>&1 | tee "$OUT/peer-distill.log" | grep -E '^\{|Error|error' | tail -5
  fi
  echo "== bench distill, bf16"
  teacher_and_student
  recipe bf16 "$SEQ" "$MICRO" \
    "{ name: align, objective: attention_alignment, trainable: attention, optimizer: { lr: 1e-3 }, steps: 100, sequence_length: $SEQ, micro_batch: $MICRO }" \
    "{ name: kd, objective: distillation, trainable: all, optimizer: { lr: 1e-5 }, steps: 100, sequence_length: $SEQ, micro_batch: $MICRO, kl_weight: 1.0, loss_chunk: 128 }" \
    > "$work/speed.yaml"
  # one `bench distill` of speed.yaml: results in $OUT/bench-distill$1.json, with the environment settings that follow
  bench() {
    local suffix=$1; shift
    ( (( $# )) && export "$@"
      cli bench distill --recipe "$work/speed.yaml" --device cuda --steps "${STEPS:-8}" --warmup 2 --json "$OUT/bench-distill$suffix.json" < /dev/null 2>&1 | tail -25 )
  }
  bench ""
  # switch  what it measures  file suffix  settings
  while IFS='|' read -r switch what suffix settings; do
    [[ ${!switch:-0} == 1 ]] || continue
    echo "== bench distill, bf16, $what ($settings)"
    bench "$suffix" $settings
  done <<'EOF_VARIANTS'
TENSOR_LOSS|the logit loss as tensor ops|-tensor-loss|COMBADISTILL_FUSED_LOGIT_LOSS=0
UNFUSED|without the short-convolution and gradient-norm kernels|-unfused|COMBADISTILL_FUSED_SHORT_CONV=0 COMBADISTILL_FUSED_GRAD_NORM=0
WIDE_CONV|the eight-channel short-convolution kernels|-wide-conv|COMBADISTILL_SHORT_CONV_WIDE=1
CANDIDATES|the kernels still off by default|-candidates|COMBADISTILL_SHORT_CONV_WIDE=1 COMBADISTILL_FUSED_RMSNORM=1
TF32_KERNELS|the tf32 Comba kernels|-tf32-kernels|COMBADISTILL_FUSED_BF16=0
EOF_VARIANTS
fi

if [[ $steps == *quality* ]]; then
  teacher_and_student
  for p in bf16 float32; do
    echo "== ${KD_STEPS:-200} KL steps, $p"
    recipe $p 512 2 "{ name: kd, objective: distillation, trainable: all, optimizer: { lr: 1e-4 }, schedule: { warmup_steps: 10 }, steps: ${KD_STEPS:-200}, sequence_length: 512, micro_batch: 2, kl_weight: 1.0, loss_chunk: 256, log_every: 1, eval_every: 100000, checkpoint_every: 100000 }" > "$work/kd-$p.yaml"
    rm -rf "$work/kd-$p"
    SECONDS=0
    cli distill --recipe "$work/kd-$p.yaml" --run-dir "$work/kd-$p" --device cuda 2>&1 | tail -4
    echo "$SECONDS s"
    cp "$work/kd-$p/01-kd/metrics.jsonl" "$OUT/kd-$p.jsonl"
  done
fi

if [[ $steps == *stories* ]]; then
  echo "== stories260K recipe on the GPU (precision auto: bf16)"
  rm -rf /tmp/s260run
  SECONDS=0
  cli distill --recipe recipes/stories260k.yaml --run-dir /tmp/s260run --device cuda 2>&1 | tail -6
  echo "$SECONDS s"
  cp /tmp/s260run/summary.json "$OUT/stories260k-summary.json"
fi

if [[ $steps == *kernels* ]]; then
  echo "== bench kernel, bf16 kernels"
  cli bench kernel --device cuda --ops fused,sdpa --json "$OUT/bench-kernel-bf16.json" 2>&1 | tail -14
  if [[ -n ${KERNEL_SRC:-} ]]; then
    echo "== $KERNEL_SRC: check against float64 and time"
    BF16_ONLY=1 timeout 200 python3 tools/kernels/comba_check.py --check --time > "$OUT/kernel-candidate.log" 2>&1
    tail -20 "$OUT/kernel-candidate.log"
  fi
  if [[ ${PROFILE:-0} == 1 ]]; then
    echo "== Nsight Compute on ${NCU_KERNELS:=fwd_prepare_128_bf16}"
    SOURCE=1 NCU_TIMEOUT=${NCU_TIMEOUT:-120} bash tools/gpu/profile-kernels.sh | tail -40
  fi
  if [[ ${PEER:-1} != 0 ]]; then
    echo "== fla chunk_comba alone (tools/kernels/peer_slim.py: peer_bench.py's inputs and timing)"
    fla_kernels "${PEER_TIMEOUT:-240}"
  fi
fi

if [[ $steps == *lane* ]]; then
  echo "== GPU test lane"
  # every class with a test that needs CUDA (Gpu.Require), but the NCCL ones, which tools/gpu/multi-gpu.sh runs on two GPUs
  classes=(Runtime.CudaKernelGpuTests Ops.FusedCombaTests Ops.CombaGpuTests Modeling.StudentGpuTests Modeling.LlamaGpuTests
           IO.CheckpointTests Distillation.DistillationGpuTests Distillation.DistillationBenchmarkTests Distillation.FusedAdamWTests
           Ops.FusedLogitLossTests Distillation.FusedGradientNormsTests Ops.FusedShortConvolutionTests Ops.FusedRmsNormTests
           Runtime.MemoryExhaustionTests)
  args=(); for c in "${classes[@]}"; do args+=(-class "CombaDistill.Tests.$c"); done
  bash .gpu/run.sh tests/CombaDistill.Tests.dll -noColor -parallel none "${args[@]}" > "$OUT/lane.log" 2>&1
  grep -E "\[FAIL\]|Total:|measured|error" "$OUT/lane.log" | head -30
fi
