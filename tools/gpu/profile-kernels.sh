#!/usr/bin/env bash
# On the GPU host (device call; needs nothing carried but the repository): where the bf16 Comba kernels spend their
# time, at the first benchmark shape (B, T, H, D) = (8, 2048, 16, 128).
#   $OUT/ptxas.txt   registers, spills and shared memory of every kernel (nvcc -Xptxas -v on the same source)
#   $OUT/ncu.txt     Nsight Compute's speed-of-light, occupancy, launch and warp-stall sections, one launch of each
#                    kernel (clocks left alone: --clock-control none)
# KERNEL_SRC picks another kernel source (as tools/kernels/comba_check.py does); NCU_KERNELS narrows the kernels
# profiled (a regular expression over the names, '_128_bf16' by default); SOURCE=1 adds the source counters (the
# instructions where warps stall most); PROFILE_SHAPES (indices, e.g. 0,1) picks the benchmark shapes, the first by
# default, and NCU_LAUNCHES the number of launches profiled (8); STALLS=1 adds the warp-stall reasons (warps stalled
# for each reason per issued instruction) and the instructions executed.
set -uo pipefail
src=${KERNEL_SRC:-kernels/comba_chunk.cu}
# the build profiled: DEFINES (as comba_check.py takes them, names separated by spaces or +)
defines=${DEFINES:-}; flags=()
for d in ${defines//+/ }; do flags+=("-D$d"); done
nvcc -std=c++17 -arch=sm_90 -cubin -o /tmp/comba.cubin -Xptxas -v ${flags[@]+"${flags[@]}"} "$src" > "$OUT/ptxas.txt" 2>&1
grep -A1 "_bf16" "$OUT/ptxas.txt" | grep -E "Compiling|registers|spill" | sed 's/ptxas info *: //' | head -60
extra=()
[[ ${SOURCE:-0} == 1 ]] && extra+=(--section SourceCounters)
[[ ${STALLS:-0} == 1 ]] && extra+=(--metrics 'regex:^(smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio|smsp__inst_executed\.sum)$')
timeout ${NCU_TIMEOUT:-240} ncu --clock-control none -k regex:"${NCU_KERNELS:-_128_bf16}" --launch-count ${NCU_LAUNCHES:-8} \
  ${extra[@]+"${extra[@]}"} --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
  python3 tools/kernels/comba_check.py --profile > "$OUT/ncu.txt" 2>&1
grep -E "comba_|Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Compute \(SM\) Throughput|Memory Throughput|Block Limit|Stall|stalled_|inst_executed" "$OUT/ncu.txt" | head -160
