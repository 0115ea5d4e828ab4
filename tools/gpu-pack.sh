#!/usr/bin/env bash
# Prepares .gpu/ for a device call: Release builds of the CLI and the tests (without CPU libtorch),
# a .NET runtime, and copies of the ../shared fixtures the tests read (../shared does not travel).
# Then call the device tool with carry [".gpu"] and e.g.
#   bash tools/gpu/session.sh               # GPU test lane, HF references, benchmarks; results under $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${COMBADISTILL_SHARED:-../shared}
dotnet build tests/CombaDistill.Tests -c Release --nologo -v quiet -clp:ErrorsOnly
# the test output holds the CLI too (tests/CombaDistill.Cli.dll), so one copy travels
"$shared/gpu/pack.sh" tests=tests/CombaDistill.Tests/bin/Release/net10.0
rm -rf .gpu/cli
rm -rf .gpu/shared && mkdir -p .gpu/shared/models .gpu/shared/data
cp -r "$shared/models/stories260K" .gpu/shared/models/
cp -r "$shared/data/." .gpu/shared/data/
du -sh .gpu
