#!/usr/bin/env bash
# Packs combadistill as a .NET tool, installs the package into a temporary tool path, and runs the installed
# copy the way a user would: --help, then import, inspect and a short greedy generation on stories260K, which
# loads the bundled CPU libtorch and the (GLIBCXX-patched) libLibTorchSharp.so from the installed package.
# Slow (a ~200 MB package; about 2 minutes on the shared 2-core machine), so CI does not run it. docs/install.md.
#   tools/check-tool.sh            (COMBADISTILL_SHARED picks the fixtures, default ../shared)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=$(cd "${COMBADISTILL_SHARED:-$root/../shared}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
package=$(sed -n 's:.*<PackageId>\(.*\)</PackageId>.*:\1:p' "$root/src/CombaDistill.Cli/CombaDistill.Cli.csproj")

step() { printf '%-46s' "$1"; start=$SECONDS; }
done_() { echo "ok ($((SECONDS - start)) s)"; }

step "dotnet pack ($package)"
dotnet pack "$root/src/CombaDistill.Cli" -c Release -o "$work/packages" --nologo -v quiet >"$work/pack.log" 2>&1 || { cat "$work/pack.log"; exit 1; }
done_
step "dotnet tool install --tool-path"
dotnet tool install --tool-path "$work/tools" --add-source "$work/packages" "$package" >"$work/install.log" 2>&1 || { cat "$work/install.log"; exit 1; }
done_
tool=$work/tools/combadistill

step "combadistill --help"
help=$("$tool" --help)
grep -q "distill" <<<"$help" || { echo "no distill command in --help"; exit 1; }
done_

installed=$(dirname "$(find "$work/tools/.store" -path '*linux-x64/native/libLibTorchSharp.so' | head -1)")
step "installed libLibTorchSharp.so loads here"
# (outputs are captured first: with pipefail, grep -q closing a pipe early would fail the pipeline)
libstdcxx=$(ldconfig -p | awk '/libstdc\+\+\.so\.6 /{print $NF; exit}')
if command -v readelf >/dev/null && ! grep -qa GLIBCXX_3.4.32 "$libstdcxx"; then
  # this libstdc++ lacks GLIBCXX_3.4.32: the installed copy must carry the build's weak-version patch
  versions=$(readelf -V "$installed/libLibTorchSharp.so")
  grep -q "GLIBCXX_3.4.32  Flags: WEAK" <<<"$versions" \
    || { echo "the installed libLibTorchSharp.so requires GLIBCXX_3.4.32, which this system lacks"; exit 1; }
fi
done_

step "combadistill import stories260K"
"$tool" import --from "$shared/models/stories260K/stories260K.bin" --tokenizer "$shared/models/stories260K/tok512.bin" --out "$work/stories260K" >/dev/null 2>"$work/import.log" \
  || { cat "$work/import.log"; exit 1; }
done_
step "combadistill inspect"
summary=$("$tool" inspect "$work/stories260K")
grep -q "260,032" <<<"$summary" || { echo "inspect did not report 260,032 parameters"; exit 1; }
done_
step "combadistill generate (CPU libtorch)"
text=$("$tool" --device cpu generate --model "$work/stories260K" --prompt "Once upon a time" --max-tokens 12 --temperature 0 2>"$work/generate.log") \
  || { cat "$work/generate.log"; exit 1; }
[[ $text == *"there was a little girl"* ]] || { echo "unexpected text: $text"; exit 1; }
done_
echo "the installed tool works: $(du -sh "$work/packages" | cut -f1) package, $(du -sh "$work/tools" | cut -f1) installed"
