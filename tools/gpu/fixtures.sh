#!/usr/bin/env bash
# On the GPU host: the test fixtures that need transformers (device call with carry [".gpu"], after
# `tools/gpu-pack.sh` and `tools/export-gpu-inputs.sh` here). Everything comes back as one archive, $OUT/fixtures.tar,
# laid out as the repository: `tar -xf fixtures.tar` in the checkout's root puts each file where its test reads it.
#   - Mistral with a sliding window (tools/hf_mistral_reference.py) -> tests/CombaDistill.Tests/Data/hf/
#   - the exported students run by transformers (tools/check_export.py) -> tests/CombaDistill.Tests/Data/export/transformers/
set -uo pipefail
stage=/tmp/fixtures; rm -rf $stage
hf=$stage/tests/CombaDistill.Tests/Data/hf; mkdir -p $hf
PYTHONUNBUFFERED=1 timeout 300 python3 tools/hf_mistral_reference.py --out /tmp/mistral 2>&1 | tail -3
mkdir -p $hf/mistral_sliding
cp /tmp/mistral/config.json /tmp/mistral/model.safetensors /tmp/mistral/pytorch_model.bin $hf/mistral_sliding/ 2>/dev/null
cp /tmp/mistral/mistral_sliding_logits.safetensors $hf/ 2>/dev/null
export_out=$stage/tests/CombaDistill.Tests/Data/export/transformers; mkdir -p $export_out
PYTHONUNBUFFERED=1 timeout 400 python3 tools/check_export.py --backend transformers --docs docs/export.md \
  --out $export_out .gpu/export/* 2>&1 | tail -8
python3 -c 'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}")' \
  > $stage/versions.txt
tar -cf "$OUT/fixtures.tar" -C $stage .
tar -tvf "$OUT/fixtures.tar"
