#!/usr/bin/env bash
# Builds a small Go program of this repository (a directory with its own go.mod; modules from the
# Go module proxy) into .cache/bin/<name>-<hash of its sources>/<name> and prints that path.
# Reuses what is there, and a machine-wide copy under ~/.cache/meshless/bin (like
# build-helm.sh), so a fresh clone on the same machine does not build it again.
#   hack/build-go-program.sh SOURCE_DIR NAME
# Used for the go-spiffe test peer (build-gospiffe.sh) and the benchmarks' Go no-op webhook.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
src=$(cd "$1" && pwd)
name=$2

sums=()
[[ -f "$src/go.sum" ]] && sums=("$src/go.sum")  # none when the program needs no module
hash=$(cat "$src/go.mod" "${sums[@]}" "$src"/*.go | sha256sum | cut -c1-12)
out="$root/.cache/bin/$name-$hash"
shared="${MESHLESS_BIN_CACHE:-$HOME/.cache/meshless/bin}/$name-$hash"

if [[ -x "$out/$name" ]]; then
  echo "$out/$name"; exit 0
fi
mkdir -p "$out"
if [[ -x "$shared/$name" ]]; then
  cp "$shared/$name" "$out/$name.tmp" && mv "$out/$name.tmp" "$out/$name"
  echo "$out/$name"; exit 0
fi

# the machine's go when new enough, else the pinned toolchain from the module proxy (hack/go.sh)
go=$("$here/go.sh")
unset GOROOT
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly
(cd "$src" && "$go" build -trimpath -o "$out/$name.tmp" .) >&2
mv "$out/$name.tmp" "$out/$name"
mkdir -p "$shared" && cp "$out/$name" "$shared/$name.tmp" && mv "$shared/$name.tmp" "$shared/$name" || true
echo "$out/$name"
