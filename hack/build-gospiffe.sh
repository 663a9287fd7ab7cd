#!/usr/bin/env bash
# Builds the go-spiffe test peer (tests/gospiffe: its own go.mod, go-spiffe from the Go module
# proxy) into .cache/bin/gospiffe-<hash of its sources>/gospiffe and prints that path. Reuses
# what is there, and a machine-wide copy under ~/.cache/meshless/bin (like build-helm.sh), so
# a fresh clone on the same machine does not build it again. The tests call this script.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
src="$root/tests/gospiffe"

hash=$(cat "$src/go.mod" "$src/go.sum" "$src"/*.go | sha256sum | cut -c1-12)
out="$root/.cache/bin/gospiffe-$hash"
shared="${MESHLESS_BIN_CACHE:-$HOME/.cache/meshless/bin}/gospiffe-$hash"

if [[ -x "$out/gospiffe" ]]; then
  echo "$out/gospiffe"; exit 0
fi
mkdir -p "$out"
if [[ -x "$shared/gospiffe" ]]; then
  cp "$shared/gospiffe" "$out/gospiffe.tmp" && mv "$out/gospiffe.tmp" "$out/gospiffe"
  echo "$out/gospiffe"; exit 0
fi

# the machine's go when new enough, else the pinned toolchain from the module proxy (hack/go.sh)
go=$("$here/go.sh")
unset GOROOT
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly
(cd "$src" && "$go" build -trimpath -o "$out/gospiffe.tmp" .) >&2
mv "$out/gospiffe.tmp" "$out/gospiffe"
mkdir -p "$shared" && cp "$out/gospiffe" "$shared/gospiffe.tmp" && mv "$shared/gospiffe.tmp" "$shared/gospiffe" || true
echo "$out/gospiffe"
