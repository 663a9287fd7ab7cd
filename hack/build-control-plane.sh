#!/usr/bin/env bash
# Builds kube-apiserver and etcd from their Go modules through the module proxy, into
# .cache/bin/<versions>/. Reuses what is there; a changed pin builds a new directory.
#
# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/apiserver, ...) at v0.0.0
# and replaces them with ./staging paths, so `go install k8s.io/kubernetes/...@vX` cannot work.
# A small wrapper module of ours requires k8s.io/kubernetes vX and replaces every staging
# module with the matching published v0.N.M, taking the list from the tag's own go.mod.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

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

minor=${KUBERNETES_VERSION#v1.}   # 36.3
staging_version="v0.${minor}"

gomod_path=$(go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[[ -f "$gomod_path" ]] || { echo "cannot fetch go.mod of k8s.io/kubernetes@${KUBERNETES_VERSION}" >&2; exit 1; }
go_directive=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod_path")

{
  echo "module meshless.dev/control-plane-build"
  echo
  echo "go ${go_directive}"
  echo
  echo "require k8s.io/kubernetes ${KUBERNETES_VERSION}"
  echo
  echo "replace ("
  sed -n 's#^\t\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 '"${staging_version}"'#p' "$gomod_path"
  echo ")"
} > go.mod
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
GO

echo "resolving modules for kube-apiserver ${KUBERNETES_VERSION} and etcd ${ETCD_VERSION}" >&2
go get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" >&2
go mod tidy >&2

ldflags="-s -w -X k8s.io/component-base/version.gitVersion=${KUBERNETES_VERSION} \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor%%.*} \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
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
