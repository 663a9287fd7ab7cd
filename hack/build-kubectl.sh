#!/usr/bin/env bash
# Builds kubectl from the pinned kubernetes module (KUBERNETES_VERSION in versions.env: the same
# version as the local kube-apiserver) into .cache/bin/kubectl-<version>/kubectl and prints that
# path. Every target and test runs this kubectl, never one from PATH (tests/tools.py kubectl()).
# Reuses what is there, and a machine-wide copy under ~/.cache/meshless/bin like the other
# build scripts. The wrapper module is hack/lib/k8s-module.sh's, with cmd/kubectl added.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=lib/k8s-module.sh
source "$here/lib/k8s-module.sh"

out="$root/.cache/bin/kubectl-${KUBERNETES_VERSION}"
shared="${MESHLESS_BIN_CACHE:-$HOME/.cache/meshless/bin}/kubectl-${KUBERNETES_VERSION}"

if [[ -x "$out/kubectl" ]]; then
  echo "$out/kubectl"; exit 0
fi
mkdir -p "$out"
if [[ -x "$shared/kubectl" ]]; then
  cp "$shared/kubectl" "$out/kubectl.tmp" && mv "$out/kubectl.tmp" "$out/kubectl"
  echo "$out/kubectl"; exit 0
fi

go=$("$here/go.sh")
export PATH="$(dirname "$go"):$PATH" GOFLAGS=-mod=mod GOTOOLCHAIN=local
unset GOROOT
work="$root/.cache/build/kubectl-${KUBERNETES_VERSION}"
mkdir -p "$work"
cd "$work"

echo "resolving modules for kubectl ${KUBERNETES_VERSION}" >&2
k8s_wrapper_module kubectl

ldflags=$(k8s_ldflags)
start=$(date +%s)
echo "building kubectl ${KUBERNETES_VERSION} with $(go version) (a few minutes on a fresh machine)" >&2
go build -trimpath -ldflags "$ldflags" -o "$out/kubectl.tmp" k8s.io/kubernetes/cmd/kubectl >&2
mv "$out/kubectl.tmp" "$out/kubectl"
echo "built kubectl in $(( $(date +%s) - start ))s" >&2
mkdir -p "$shared" && cp "$out/kubectl" "$shared/kubectl.tmp" && mv "$shared/kubectl.tmp" "$shared/kubectl" || true
echo "$out/kubectl"
