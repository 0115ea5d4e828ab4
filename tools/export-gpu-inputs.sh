#!/usr/bin/env bash
# Exports the students whose transformers outputs are committed as fixtures (tests/CombaDistill.Tests/Data/export/,
# README.md there) into .gpu/export/, which the GPU host then runs:
#   python3 tools/check_export.py --backend transformers --docs docs/export.md --out "$OUT" .gpu/export/*
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rm -rf .gpu/export
mkdir -p .gpu/export
for student in tests/CombaDistill.Tests/Data/export/*/; do
  name=$(basename "$student")
  shard=5GB
  [[ $name == hybrid ]] && shard=60KB    # several shards and an index, so transformers' sharded loading is exercised
  tools/combadistill export --model "$student" --out ".gpu/export/$name" --max-shard-size "$shard"
done
ls .gpu/export
