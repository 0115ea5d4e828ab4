#!/usr/bin/env bash
# On the GPU host (after tools/gpu-pack.sh; carry [".gpu"]): which micro-batches at sequence SEQ (2048) train at the
# Llama-3.2-1B shape, per stage, with and without activation checkpointing, in bf16. Each try is `bench distill` for
# one timed step; a try that runs out of memory is recorded as such. Results: $OUT/memory-sweep.tsv.
# usage: bash tools/gpu/memory-sweep.sh [micro-batches...]   (default: 4 8 16 32 64; every stage and setting, each
#        setting stopping at its first failure)
#        bash tools/gpu/memory-sweep.sh STAGE:CHECKPOINTING:MICRO...   (only these tries, e.g. kd:true:16 align:false:32)
set -uo pipefail
source tools/gpu/common.sh
SEQ=${SEQ:-2048}
teacher_and_student
printf 'stage\tcheckpointing\tsequence\tmicro_batch\tresult\ttokens_per_s\tpeak_gpu_bytes\n' > "$OUT/memory-sweep.tsv"
# one try: prints "fits" or why not, and appends its row
try_one() {
  local stage=$1 ckpt=$2 micro=$3 s
  if [[ $stage == align ]]; then s="{ name: align, objective: attention_alignment, trainable: attention, steps: 10, sequence_length: $SEQ, micro_batch: $micro, activation_checkpointing: $ckpt }"
  else s="{ name: kd, objective: distillation, trainable: all, steps: 10, sequence_length: $SEQ, micro_batch: $micro, loss_chunk: 128, activation_checkpointing: $ckpt }"; fi
  recipe bf16 "$SEQ" "$micro" "$s" > "$work/sweep.yaml"
  rm -f "$work/sweep.json"
  if cli bench distill --recipe "$work/sweep.yaml" --device cuda --steps 1 --warmup 1 --json "$work/sweep.json" > "$work/sweep.log" 2>&1; then
    python3 -c "import json,sys; s=json.load(open('$work/sweep.json'))['rows'][0]; print('\t'.join(map(str, ['$stage', '$ckpt', $SEQ, $micro, 'fits', round(s['tokensPerSecond']), s['peakDeviceBytes']])))" >> "$OUT/memory-sweep.tsv"
    echo fits
  else
    local why; why=$(grep -o -m1 -i 'out of memory' "$work/sweep.log" || echo failed)
    printf '%s\t%s\t%s\t%s\t%s\t\t\n' "$stage" "$ckpt" "$SEQ" "$micro" "$why" >> "$OUT/memory-sweep.tsv"
    [[ $why == failed ]] && tail -5 "$work/sweep.log" >&2
    echo "$why"
  fi
}
if [[ ${1:-} == *:* ]]; then
  for t in "$@"; do IFS=: read -r stage ckpt micro <<< "$t"; echo "$t: $(try_one "$stage" "$ckpt" "$micro")"; done
else
  for stage in align kd; do
    for ckpt in false true; do
      for micro in ${*:-4 8 16 32 64}; do
        [[ $(try_one $stage $ckpt "$micro") == fits ]] || break
      done
    done
  done
fi
if command -v column >/dev/null; then column -t -s $'\t' "$OUT/memory-sweep.tsv"; else cat "$OUT/memory-sweep.tsv"; fi
