# Sourced by hack/build-control-plane.sh, build-kubectl.sh and build-node.sh (after hack/go.sh
# has put go on PATH and versions.env is sourced): the one wrapper module they all build from.
#
# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/apiserver, ...) at v0.0.0
# and replaces them with ./staging paths, so `go install k8s.io/kubernetes/...@vX` cannot work.
# The wrapper requires k8s.io/kubernetes vX and replaces every staging module with the matching
# published v0.N.M, taking the list from the tag's own go.mod. Every build imports etcd and
# kube-apiserver, so module selection picks the very same versions for every binary and the Go
# build cache one build fills serves the next.

# k8s_wrapper_module CMD...: in the current directory, the wrapper's go.mod and a tools.go
# importing etcd, kube-apiserver and k8s.io/kubernetes/cmd/CMD for each CMD; modules resolved.
k8s_wrapper_module() {
  local minor=${KUBERNETES_VERSION#v1.} gomod_path go_directive cmd
  gomod_path=$(go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [[ -f "$gomod_path" ]] || { echo "cannot fetch go.mod of k8s.io/kubernetes@${KUBERNETES_VERSION}" >&2; return 1; }
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
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    printf '\t_ "go.etcd.io/etcd/server/v3"\n\t_ "k8s.io/kubernetes/cmd/kube-apiserver"\n'
    for cmd in "$@"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$cmd"; done
    printf ')\n'
  } > tools.go
  go get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" >&2
  go mod tidy >&2
}

# k8s_ldflags: the linker flags that give a binary the version `kubectl version` and the API
# server report (the pinned tag, a clean tree, a fixed build date).
k8s_ldflags() {
  local minor=${KUBERNETES_VERSION#v1.}
  echo "-s -w -X k8s.io/component-base/version.gitVersion=${KUBERNETES_VERSION}" \
    "-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor%%.*}" \
    "-X k8s.io/component-base/version.gitTreeState=clean" \
    "-X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
}
