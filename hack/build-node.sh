#!/usr/bin/env bash
# Builds (or reuses) the node's binaries for `make cluster NODE=1`: kube-controller-manager,
# kube-scheduler, kubelet and kube-proxy from the same wrapper module and pin as the control
# plane (hack/build-control-plane.sh), plus kube-network-policies (the NetworkPolicy engine kind
# ships) and CoreDNS (the cluster DNS) from their own Go modules, and a static `pause` from
# kubernetes' own pause.c.
# Output: .cache/bin/node-<versions>/, with a machine-wide copy in ~/.cache/meshless/bin/ that
# a fresh clone on the same machine reuses. Prints the directory on its last line.
# With --check it builds nothing and fails when a build would be needed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=lib/k8s-module.sh
source "$here/lib/k8s-module.sh"

# "-xtq": kube-network-policies with the queue rule patched (hack/node/compat_queue.go)
# kube-proxy is among the kubernetes binaries since "_proxy" (a cache without it builds anew)
name="node-k8s-${KUBERNETES_VERSION}_proxy_knp-${KUBE_NETWORK_POLICIES_VERSION}-xtq_coredns-${COREDNS_VERSION}"
out="$root/.cache/bin/$name"
shared="${MESHLESS_BIN_CACHE:-$HOME/.cache/meshless/bin}/$name"
bins=(kube-controller-manager kube-scheduler kubelet kube-proxy kube-network-policies coredns pause)

have_all() { local b; for b in "${bins[@]}"; do [[ -x "$1/$b" ]] || return 1; done; }

if have_all "$out"; then echo "$out"; exit 0; fi
if have_all "$shared"; then
  mkdir -p "$out"
  for b in "${bins[@]}"; do cp "$shared/$b" "$out/"; done
  echo "$out"; exit 0
fi
# --check: say whether a build is needed instead of building (tests fail fast on it)
if [[ "${1:-}" == "--check" ]]; then
  echo "node binaries not built yet: run \`make node-binaries\` (several minutes)" >&2; exit 1
fi
mkdir -p "$out"

# the machine's go when new enough, else the pinned toolchain from the module proxy (hack/go.sh)
go=$("$here/go.sh"); export PATH="$(dirname "$go"):$PATH"; unset GOROOT
export GOTOOLCHAIN=local
start=$(date +%s)
ldflags=$(k8s_ldflags)

k8s_missing=0
for b in kube-controller-manager kube-scheduler kubelet kube-proxy; do [[ -x "$out/$b" ]] || k8s_missing=1; done
if (( k8s_missing )); then
  # The same wrapper module as the control plane's, with the node commands added. It keeps the
  # control plane's imports (etcd, kube-apiserver) so that module selection picks the very same
  # versions and the shared Go build cache already holds most packages.
  work="$root/.cache/build/node-k8s-${KUBERNETES_VERSION}"
  mkdir -p "$work"
  (
    cd "$work"
    export GOFLAGS=-mod=mod
    echo "resolving modules for the node's kubernetes ${KUBERNETES_VERSION} binaries" >&2
    k8s_wrapper_module kube-controller-manager kube-scheduler kubelet kube-proxy
    echo "building kube-controller-manager, kube-scheduler, kubelet, kube-proxy (many minutes on a fresh machine)" >&2
    rm -rf "$out/.k8s.tmp" && mkdir -p "$out/.k8s.tmp"
    go build -trimpath -ldflags "$ldflags" -o "$out/.k8s.tmp/" \
      k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy >&2
    mv "$out/.k8s.tmp/"* "$out/" && rmdir "$out/.k8s.tmp"
  )
fi

if [[ ! -x "$out/kube-network-policies" ]]; then
  echo "building kube-network-policies ${KUBE_NETWORK_POLICIES_VERSION}" >&2
  # Built from a copy of its module with one change: the nfqueue rule goes through the
  # xtables NFQUEUE target (nft_compat) instead of nft's `queue` expression, which kernels
  # without CONFIG_NFT_QUEUE (this machine's) reject. See hack/node/compat_queue.go.
  src=$(GOFLAGS= go mod download -json "sigs.k8s.io/kube-network-policies@${KUBE_NETWORK_POLICIES_VERSION}" \
    | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [[ -d "$src" ]] || { echo "cannot fetch sigs.k8s.io/kube-network-policies@${KUBE_NETWORK_POLICIES_VERSION}" >&2; exit 1; }
  knp="$root/.cache/build/kube-network-policies-${KUBE_NETWORK_POLICIES_VERSION}"
  rm -rf "$knp" && cp -r "$src" "$knp" && chmod -R u+w "$knp"
  pkg="$knp/pkg/networkpolicy"
  perl -0pi -e 's/queue := &expr\.Queue\{Num: uint16\(c\.config\.QueueID\)\}\n\tif c\.config\.FailOpen \{\n\t\tqueue\.Flag = expr\.QueueFlagBypass\n\t\}/queue := compatQueue(uint16(c.config.QueueID), c.config.FailOpen)/g' "$pkg/controller.go"
  perl -pi -e 's/&expr\.Queue\{Num: uint16\(n\.nfQueueID\), Flag: expr\.QueueFlagBypass\}/compatQueue(uint16(n.nfQueueID), true)/' "$pkg/dnsagent.go"
  if grep -n 'expr\.Queue{' "$pkg"/*.go | grep -v _test.go; then
    echo "kube-network-policies ${KUBE_NETWORK_POLICIES_VERSION}: queue rules not where the patch expects them" >&2
    exit 1
  fi
  cp "$here/node/compat_queue.go" "$pkg/"
  (cd "$knp" && GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$out/kube-network-policies.tmp" ./cmd >&2)
  mv "$out/kube-network-policies.tmp" "$out/kube-network-policies"
fi

if [[ ! -x "$out/coredns" ]]; then
  echo "building CoreDNS ${COREDNS_VERSION}" >&2
  # CoreDNS's own module at the pin, its own dependency versions (go.sum), with a main that
  # imports only the plugins the node's Corefile uses: CoreDNS's documented compile-time plugin
  # choice. Its stock main also links the cloud DNS back ends (AWS, Azure, Google, DataDog...),
  # which the node never uses: more modules to fetch, minutes more to build, a bigger binary.
  # The Corefile is written by hack/localnode.py.
  dns="$root/.cache/build/coredns-${COREDNS_VERSION}"
  mkdir -p "$dns"
  cp "$here/node/coredns_main.go" "$dns/main.go"
  (
    cd "$dns"
    export GOFLAGS=-mod=mod
    printf 'module meshless.dev/coredns-build\n\ngo 1.26\n\nrequire github.com/coredns/coredns %s\n' \
      "${COREDNS_VERSION}" > go.mod
    go mod tidy >&2
    go build -trimpath -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=${COREDNS_VERSION}" \
      -o "$out/coredns.tmp" . >&2
  )
  mv "$out/coredns.tmp" "$out/coredns"
fi

if [[ ! -x "$out/pause" ]]; then
  # kubernetes' own pause.c (build/pause/linux in the module), linked statically.
  src=$(GOFLAGS= go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  gcc -Os -static -DVERSION="${KUBERNETES_VERSION}-meshless" -o "$out/pause.tmp" "$src/build/pause/linux/pause.c"
  strip "$out/pause.tmp"
  mv "$out/pause.tmp" "$out/pause"
fi

echo "node binaries ready in $(( $(date +%s) - start ))s" >&2
# each file lands whole (copy, then rename), so a clone reading the shared copy never sees half
mkdir -p "$shared" && for b in "${bins[@]}"; do
  cp "$out/$b" "$shared/.$b.tmp" && mv "$shared/.$b.tmp" "$shared/$b"
done || true
echo "$out"
