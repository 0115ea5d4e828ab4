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

# fla's package and the peer scripts from .peerpack (fla.tar.xz: fla's package folder, packed) in $peers, once
peers=/tmp/peers
unpack_peers() { [[ -d $peers/fla ]] || { mkdir -p $peers && tar -xJf .peerpack/fla.tar.xz -C $peers && cp .peerpack/*.py $peers/; }; }

# fla's chunk_comba alone at the three kernel shapes (tools/kernels/peer_slim.py: peer_bench.py's inputs and timing),
# at most $1 seconds: $OUT/peer-slim.log. Triton compiles and autotunes every configuration on a fresh machine, which
# took more than 240 s for the three shapes. What a later call needs of its cache (each kernel's .json and .cubin, and
# the autotuner's choices, which TRITON_CACHE_AUTOTUNING keeps) comes back xz-packed in pieces of at most 15 MB,
# $OUT/triton-cache.tar.xz.part-*: `cat` them into .peerpack/triton-cache.tar.xz to spare the next call that work.
fla_kernels() {
  unpack_peers
  export TRITON_CACHE_DIR=/tmp/triton-cache TRITON_CACHE_AUTOTUNING=1; mkdir -p $TRITON_CACHE_DIR
  [[ -f .peerpack/triton-cache.tar.xz ]] && tar -xJf .peerpack/triton-cache.tar.xz -C $TRITON_CACHE_DIR
  (cd $peers && FLA_PATH=$PWD timeout "$1" python3 "$OLDPWD/tools/kernels/peer_slim.py") > "$OUT/peer-slim.log" 2>&1
  tail -8 "$OUT/peer-slim.log"
  (cd $TRITON_CACHE_DIR && find . -name '*.json' -o -name '*.cubin' | tar -cf - -T - | xz -T0 -6 | split -b 15M - "$OUT/triton-cache.tar.xz.part-")
  ls -la "$OUT"/triton-cache.tar.xz.part-* | awk '{print $5, $9}'
}
