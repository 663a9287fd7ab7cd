#!/usr/bin/env bash
# Copies the CRDs from crds/ (the source of truth) into the Helm chart's crds/ folder, which
# Helm installs before the templates. With --check, changes nothing and exits 1 when the copies
# differ, for CI and `make`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src="$root/crds"
dst="$root/charts/meshless/crds"

if [[ "${1:-}" == "--check" ]]; then
  if diff -r "$src" "$dst" >/dev/null; then
    exit 0
  fi
  echo "charts/meshless/crds/ differs from crds/: run hack/sync-chart-crds.sh" >&2
  diff -r "$src" "$dst" >&2 || true
  exit 1
fi

mkdir -p "$dst"
# Remove copies whose source is gone, then copy every CRD.
for f in "$dst"/*.yaml; do
  if [[ -e "$f" && ! -e "$src/$(basename "$f")" ]]; then rm -- "$f"; fi
done
cp "$src"/*.yaml "$dst"/
