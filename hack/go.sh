#!/usr/bin/env bash
# Prints the go binary the build scripts use (hack/build-*.sh). The machine's own go (on PATH, or
# /usr/local/go/bin/go) when it is at least GO_MIN_VERSION; otherwise the toolchain pinned in
# versions.env (GO_TOOLCHAIN_VERSION), fetched once from the Go module proxy, where it is the
# module golang.org/toolchain, verified against GO_TOOLCHAIN_H1 and unpacked under
# ~/.cache/meshless/go/<version> (hack/gotoolchain.py). So a machine needs no Go at all: Debian
# 12's go 1.19 predates GOTOOLCHAIN and cannot fetch a newer one itself.
# MESHLESS_GO=<path> names the only go to consider (too old or missing: the pinned one).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

# "go1.26.8" -> "1.26.8"; empty when the binary does not run
version_of() { GOTOOLCHAIN=local "$1" version 2>/dev/null | awk '{print $3}' | sed 's/^go//'; }
at_least() { [[ "$(printf '%s\n%s\n' "$GO_MIN_VERSION" "$1" | sort -V | head -1)" == "$GO_MIN_VERSION" ]]; }

if [[ -n "${MESHLESS_GO:-}" ]]; then
  candidates=("$MESHLESS_GO")
else
  candidates=(/usr/local/go/bin/go)   # Go's own install location, often not on PATH
  command -v go >/dev/null 2>&1 && candidates=("$(command -v go)" "${candidates[@]}")
fi
for candidate in "${candidates[@]}"; do
  [[ -x "$candidate" ]] || continue
  version=$(version_of "$candidate")
  if [[ -n "$version" ]] && at_least "$version"; then
    echo "$candidate"; exit 0
  fi
  echo "$candidate is go ${version:-?}, older than $GO_MIN_VERSION: using $GO_TOOLCHAIN_VERSION" >&2
done

exec "${PYTHON:-python3}" "$here/gotoolchain.py" fetch
