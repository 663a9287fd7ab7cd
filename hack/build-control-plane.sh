#!/usr/bin/env bash
# Builds kube-apiserver and etcd from their Go modules through the module proxy, into
# .cache/bin/<versions>/. Reuses what is there; a changed pin builds a new directory.
# The wrapper module that makes that possible is hack/lib/k8s-module.sh's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=lib/k8s-module.sh
source "$here/lib/k8s-module.sh"

out="$root/.cache/bin/k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}"
# A machine-wide copy outside the work tree lets a fresh clone on the same machine (CI)
# reuse a build instead of linking kube-apiserver again.
shared="${MESHLESS_BIN_CACHE:-$HOME/.cache/meshless/bin}/k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}"

if [[ -x "$out/kube-apiserver" && -x "$out/etcd" ]]; then
  echo "$out"; exit 0
fi
mkdir -p "$out"
if [[ -x "$shared/kube-apiserver" && -x "$shared/etcd" ]]; then
  cp "$shared/kube-apiserver" "$shared/etcd" "$out/"
  echo "$out"; exit 0
fi

# the machine's go when new enough, else the pinned toolchain from the module proxy (hack/go.sh)
go=$("$here/go.sh"); export PATH="$(dirname "$go"):$PATH"; unset GOROOT
work="$root/.cache/build/k8s-${KUBERNETES_VERSION}"
mkdir -p "$work"
cd "$work"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local

echo "resolving modules for kube-apiserver ${KUBERNETES_VERSION} and etcd ${ETCD_VERSION}" >&2
k8s_wrapper_module

ldflags=$(k8s_ldflags)
start=$(date +%s)
echo "building kube-apiserver (several minutes on a fresh machine)" >&2
go build -trimpath -ldflags "$ldflags" -o "$out/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver >&2
echo "building etcd" >&2
go build -trimpath -ldflags "-s -w" -o "$out/etcd.tmp" go.etcd.io/etcd/server/v3 >&2
mv "$out/kube-apiserver.tmp" "$out/kube-apiserver"
mv "$out/etcd.tmp" "$out/etcd"
echo "built in $(( $(date +%s) - start ))s" >&2
mkdir -p "$shared" && cp "$out/kube-apiserver" "$out/etcd" "$shared/" || true
echo "$out"
