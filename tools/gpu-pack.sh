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
# CLI_ONLY=1: without the test runner's assemblies, for calls that need only the CLI
if [[ ${CLI_ONLY:-0} == 1 ]]; then
  (cd .gpu/tests && rm -f xunit* Microsoft.Testing* Microsoft.TestPlatform* Microsoft.VisualStudio.TestPlatform* \
    CsCheck.dll Microsoft.ApplicationInsights.dll CombaDistill.Tests.dll CombaDistill.Tests.pdb)
fi
# the builds travel as one xz archive (about a third of their size, so the test runner, the peers and fixtures fit
# beside them); tools/gpu/common.sh unpacks it on the GPU host before the first run
tar -cJf .gpu/tests.tar.xz -C .gpu tests && rm -rf .gpu/tests
# the peers (tools/gpu/distill-vs-peer.sh): flash-linear-attention's folder fla, put in .peers/fla by hand, packed small
if [[ -d .peers/fla ]]; then
  rm -rf .peerpack && mkdir -p .peerpack
  tar -cJf .peerpack/fla.tar.xz -C .peers fla && cp "$shared"/peers/*.py .peerpack/
  du -sh .peerpack
fi
du -sh .gpu
