#!/usr/bin/env bash
# Builds helm from its Go module (helm.sh/helm/v3, pinned in versions.env) through the module
# proxy into .cache/bin/helm-<version>/helm and prints that path. Reuses what is there, and a
# machine-wide copy under ~/.cache/meshless/bin (like build-control-plane.sh) so a fresh clone
# on the same machine does not build it again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

out="$root/.cache/bin/helm-${HELM_VERSION}"
shared="${MESHLESS_BIN_CACHE:-$HOME/.cache/meshless/bin}/helm-${HELM_VERSION}"

if [[ -x "$out/helm" ]]; then
  echo "$out/helm"; exit 0
fi
mkdir -p "$out"
if [[ -x "$shared/helm" ]]; then
  cp "$shared/helm" "$out/helm.tmp" && mv "$out/helm.tmp" "$out/helm"
  echo "$out/helm"; exit 0
fi

# the machine's go when new enough, else the pinned toolchain from the module proxy (hack/go.sh)
go=$("$here/go.sh"); export PATH="$(dirname "$go"):$PATH"; unset GOROOT
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
# helm's own Makefile stamps its version and the Kubernetes version it was built against
# (`helm version`, and .Capabilities.KubeVersion in `helm template`); do the same.
gomod_path=$(go mod download -json "helm.sh/helm/v3@${HELM_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[[ -f "$gomod_path" ]] || { echo "cannot fetch go.mod of helm.sh/helm/v3@${HELM_VERSION}" >&2; exit 1; }
client_go=$(sed -n 's#^\tk8s.io/client-go v\([0-9.]*\)$#\1#p' "$gomod_path")   # 0.35.1
k8s_minor=$(echo "$client_go" | cut -d. -f2)
ldflags="-w -s -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} \
 -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${k8s_minor} \
 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${k8s_minor}"

start=$(date +%s)
echo "building helm ${HELM_VERSION} (a few minutes on a fresh machine)" >&2
tmpbin=$(mktemp -d)
trap 'rm -rf "$tmpbin"' EXIT
GOBIN="$tmpbin" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" >&2
mv "$tmpbin/helm" "$out/helm"
echo "built helm in $(( $(date +%s) - start ))s" >&2
mkdir -p "$shared" && cp "$out/helm" "$shared/helm.tmp" && mv "$shared/helm.tmp" "$shared/helm" || true
echo "$out/helm"
