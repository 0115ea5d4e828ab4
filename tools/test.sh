#!/usr/bin/env bash
# Builds and runs the whole test suite (the xunit v3 test assembly runs as a program) and ends
# with one line: "N passed, N failed". Extra arguments go to the xunit runner (e.g. -class NAME).
# Tests run one at a time: the suite is CPU-bound on libtorch anyway (as fast serially on 2 cores), and
# serial runs keep TorchSharp's process-wide state (seeds, thread pools, finalizers) out of each other's way.
set -uo pipefail
cd "$(dirname "$0")/.."
# The real tokenizer.json files and the reference tokenizer the tokenizer tests compare with (npm packages, kept out of git).
ref=tools/tokenizer-reference
if [[ ! -d $ref/node_modules/@lenml/tokenizers ]] && command -v npm >/dev/null 2>&1; then
  npm ci --no-audit --no-fund --prefix "$ref" >/dev/null 2>&1 || npm ci --no-audit --no-fund --prefix "$ref" >/dev/null 2>&1 \
    || echo "note: npm ci in $ref failed; the tokenizer agreement tests will report it"
fi
dotnet build tests/CombaDistill.Tests -c Release --nologo -v quiet -clp:ErrorsOnly || { echo "0 passed, 1 failed"; exit 1; }
log=$(mktemp)
dotnet tests/CombaDistill.Tests/bin/Release/net10.0/CombaDistill.Tests.dll -noColor -parallel none "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
summary=$(grep -E 'Total: [0-9]+, Errors: [0-9]+, Failed: [0-9]+, Skipped: [0-9]+' "$log" | tail -1)
rm -f "$log"
if [[ -z $summary ]]; then echo "0 passed, 1 failed"; exit 1; fi
num() { sed -E "s/.*$1: ([0-9]+).*/\1/" <<<"$summary"; }
total=$(num Total); errors=$(num Errors); failed=$(num Failed); skipped=$(num Skipped)
notrun=$(grep -qE 'Not Run: [0-9]+' <<<"$summary" && num 'Not Run' || echo 0)
passed=$((total - failed - skipped - notrun))
echo "$skipped skipped (the GPU lane runs only where CUDA is)"
echo "$passed passed, $((failed + errors)) failed"
(( rc == 0 && failed == 0 && errors == 0 ))
