# Sourced by the GPU-host scripts in this folder (not run on its own): the CLI from .gpu/, a Llama-3.2-1B-shaped
# synthetic teacher with its converted student, and recipes over them.
export COMBADISTILL_SHARED=$PWD/.gpu/shared PYTHONUNBUFFERED=1
# tools/gpu-pack.sh sends the builds as one archive
[[ -d .gpu/tests || ! -f .gpu/tests.tar.xz ]] || tar -xJf .gpu/tests.tar.xz -C .gpu
cli() { bash .gpu/run.sh tests/CombaDistill.Cli.dll "$@"; }
work=${WORK:-/tmp/distill-1b}; mkdir -p "$work"

# $work/teacher (random weights, Llama-3.2-1B's shape) and $work/student (converted on the CPU), once
teacher_and_student() {
  [[ -f $work/student/config.json ]] && return 0
  cli synth --out "$work/teacher" --device cuda:0 > "$work/log" 2>&1 || { tail -5 "$work/log"; exit 1; }
  cli convert --from "$work/teacher" --out "$work/student" --device cpu >> "$work/log" 2>&1 || { tail -5 "$work/log"; exit 1; }
}

# a recipe over them on stdout: recipe PRECISION SEQUENCE MICRO-BATCH STAGE... (each stage a YAML flow mapping)
recipe() {
  local precision=$1 seq=$2 micro=$3; shift 3
  cat <<EOF
seed: 7
precision: $precision
teacher: { path: $work/teacher }
student: { path: $work/student }
data:
  train: { path: $COMBADISTILL_SHARED/data/tinyshakespeare/input.txt }
  validation: { path: $COMBADISTILL_SHARED/data/tinystories-valid-head/tinystories_val.txt, max_tokens: $(( 2 * seq + 1 )) }
  eval_tokens: $seq
stages:
EOF
  for s in "$@"; do echo "  - $s"; done
}
