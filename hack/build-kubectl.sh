#!/usr/bin/env bash
# Builds kubectl from the pinned kubernetes module (KUBERNETES_VERSION in versions.env: the same
# version as the local kube-apiserver) into .cache/bin/kubectl-<version>/kubectl and prints that
# path. Every target and test runs this kubectl, never one from PATH (tests/tools.py kubectl()).
# Reuses what is there, and a machine-wide copy under ~/.cache/meshless/bin like the other
# build scripts. The wrapper module is the control plane's (hack/build-control-plane.sh) with
# cmd/kubectl added; it keeps the control plane's imports so that module selection picks the
# very same versions and the Go build cache already holds most packages.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

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

minor=${KUBERNETES_VERSION#v1.}   # 36.3
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
  sed -n 's#^\t\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 v0.'"${minor}"'#p' "$gomod_path"
  echo ")"
} > go.mod
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO

echo "resolving modules for kubectl ${KUBERNETES_VERSION}" >&2
go get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" >&2
go mod tidy >&2

ldflags="-s -w -X k8s.io/component-base/version.gitVersion=${KUBERNETES_VERSION} \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor%%.*} \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
start=$(date +%s)
echo "building kubectl ${KUBERNETES_VERSION} with $(go version) (a few minutes on a fresh machine)" >&2
go build -trimpath -ldflags "$ldflags" -o "$out/kubectl.tmp" k8s.io/kubernetes/cmd/kubectl >&2
mv "$out/kubectl.tmp" "$out/kubectl"
echo "built kubectl in $(( $(date +%s) - start ))s" >&2
mkdir -p "$shared" && cp "$out/kubectl" "$shared/kubectl.tmp" && mv "$shared/kubectl.tmp" "$shared/kubectl" || true
echo "$out/kubectl"
