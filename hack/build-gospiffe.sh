#!/usr/bin/env bash
# Builds the go-spiffe test peer (tests/gospiffe: its own go.mod, go-spiffe from the Go module
# proxy) and prints its path (hack/build-go-program.sh: cached per source hash, and machine-wide).
# The tests call this script.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/build-go-program.sh" "$here/../tests/gospiffe" gospiffe
