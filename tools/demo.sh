#!/usr/bin/env bash
# Sets everything up on a fresh machine with the .NET 10 SDK and runs the main job on the bundled model:
# import ../shared/models/stories260K (llama2.c) into a Hugging Face-style folder, inspect it, generate from it.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${COMBADISTILL_SHARED:-../shared}
dotnet build src/CombaDistill.Cli -c Release --nologo -v quiet -clp:ErrorsOnly
cli() { dotnet src/CombaDistill.Cli/bin/Release/net10.0/CombaDistill.Cli.dll "$@"; }
cli import --from "$shared/models/stories260K/stories260K.bin" --tokenizer "$shared/models/stories260K/tok512.bin" \
    --out runs/stories260K --force
cli inspect runs/stories260K
echo "--- greedy, 200 tokens from BOS:" >&2
cli generate --model runs/stories260K --prompt "" --max-tokens 200 --temperature 0
echo
# the untrained Comba student of the same model (distill it with: combadistill distill --recipe recipes/stories260k.yaml)
cli convert --from runs/stories260K --out runs/stories260K-comba --force
echo "--- the untrained student, greedy, 60 tokens:" >&2
cli generate --model runs/stories260K-comba --prompt "Once upon a time" --max-tokens 60 --temperature 0
echo
