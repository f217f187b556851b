#!/usr/bin/env bash
# Builds the pinned control plane (kube-apiserver, kubectl, etcd) from Go modules into
# a cache directory keyed by version, skipping binaries that are already there.
#
#   e2e/controlplane/build.sh            # prints the cache directory on stdout when done
#   e2e/controlplane/build.sh --node     # also kubelet, kube-scheduler, kube-controller-manager
#
# KUBE_HARDENER_CACHE overrides the cache root (default ~/.cache/kube-hardener).
# GOTOOLCHAIN is passed through to go, so a newer toolchain can be requested if a
# future pin needs one.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.sh
source "$here/versions.sh"

log() { printf '[controlplane/build] %s\n' "$*" >&2; }

if ! command -v go >/dev/null 2>&1; then
    log "error: the go command is not installed (needed to build kube-apiserver ${KUBE_VERSION} and etcd ${ETCD_VERSION})"
    exit 1
fi

mkdir -p "$CONTROLPLANE_DIR" "$TOOLS_DIR"
log "go: $(go version)"
log "cache: $CONTROLPLANE_DIR"

# Without these the binaries report v0.0.0-master, and kubectl warns about skew.
kube_minor="${KUBE_VERSION#v1.}"
kube_minor="${kube_minor%%.*}"
kube_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X $pkg.gitVersion=${KUBE_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${kube_minor} -X $pkg.gitTreeState=clean"
done

# build NAME MODULE_DIR PACKAGE [EXTRA_LDFLAGS [OUT_DIR]]
build() {
    local name="$1" module_dir="$2" package="$3" extra_ldflags="${4:-}"
    local out="${5:-$CONTROLPLANE_DIR}/$name"
    if [[ -x "$out" ]]; then
        log "$name: cached"
        return 0
    fi
    log "$name: building $package (this takes several minutes on a small machine)"
    local started=$SECONDS
    local tmp="$out.partial.$$"
    # A failing build must show the Go error, and must never leave a half-written
    # binary that a later run would mistake for a cached one.
    if ! (cd "$module_dir" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w${extra_ldflags}" -o "$tmp" "$package"); then
        rm -f "$tmp"
        log "error: building $name from $module_dir failed (see the go output above)"
        exit 1
    fi
    mv -f "$tmp" "$out"
    log "$name: built in $((SECONDS - started))s"
}

build etcd "$here/etcd" go.etcd.io/etcd/server/v3
build kube-apiserver "$here/apiserver" k8s.io/kubernetes/cmd/kube-apiserver "$kube_ldflags"
build kubectl "$here/apiserver" k8s.io/kubernetes/cmd/kubectl "$kube_ldflags"
# The chart suite's helm and the alert suite's promtool, cached by their own versions.
# As helm's own Makefile does: the Kubernetes version `helm template` and `helm
# lint` assume is that of its client-go (1.20 otherwise).
helm_kube_minor="$(sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$here/helm/go.mod")"
helm_ldflags=" -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=${helm_kube_minor}"
done
build helm "$here/helm" helm.sh/helm/v3/cmd/helm "$helm_ldflags" "$TOOLS_DIR"
build promtool "$here/promtool" github.com/prometheus/prometheus/cmd/promtool "" "$TOOLS_DIR"
# The node suite's binaries: a separate module, because the kubelet pulls in
# dependencies (cri-api, cadvisor, ...) the API server does not need.
if [[ "${1:-}" == "--node" ]]; then
    build kubelet "$here/node" k8s.io/kubernetes/cmd/kubelet "$kube_ldflags"
    build kube-scheduler "$here/node" k8s.io/kubernetes/cmd/kube-scheduler "$kube_ldflags"
    build kube-controller-manager "$here/node" k8s.io/kubernetes/cmd/kube-controller-manager "$kube_ldflags"
fi

# CustomResourceDefinitions from a pinned Go module, so the API server can
# validate the custom objects deploy/ ships (cert-manager's Issuer and
# Certificate; prometheus-operator's ServiceMonitor and PrometheusRule). The
# directory appears whole or not at all, so its existence (what up.sh checks)
# means every file is there.
#   fetch_crds LABEL MODULE@VERSION SUBDIR DEST FILE...
fetch_crds() {
    local label="$1" module="$2" subdir="$3" dest="$4"
    shift 4
    if [[ -d "$dest" ]]; then
        log "$label CRDs: cached"
        return 0
    fi
    log "$label CRDs: downloading the Go module"
    local info dir name tmp
    if ! info="$(cd "$here" && GOFLAGS=-mod=mod go mod download -json "$module")"; then
        log "error: $module could not be downloaded (see the go output above)"
        exit 1
    fi
    dir="$(printf '%s\n' "$info" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
    mkdir -p "$(dirname "$dest")"
    tmp="$dest.partial.$$"
    rm -rf "$tmp"
    mkdir "$tmp"
    for name in "$@"; do
        if [[ ! -s "$dir/$subdir/$name" ]]; then
            rm -rf "$tmp"
            log "error: $name is not in $module at ${dir:-?}/$subdir"
            exit 1
        fi
        install -m 0644 "$dir/$subdir/$name" "$tmp/$name"
    done
    mv -T "$tmp" "$dest"
}
fetch_crds "cert-manager ${CERT_MANAGER_VERSION}" "github.com/cert-manager/cert-manager@${CERT_MANAGER_VERSION}" \
    deploy/crds "$CERT_MANAGER_CRDS_DIR" cert-manager.io_issuers.yaml cert-manager.io_certificates.yaml
fetch_crds "prometheus-operator ${PROMETHEUS_OPERATOR_VERSION}" \
    "github.com/prometheus-operator/prometheus-operator@${PROMETHEUS_OPERATOR_VERSION}" \
    example/prometheus-operator-crd "$PROMETHEUS_OPERATOR_CRDS_DIR" \
    monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_prometheusrules.yaml

"$CONTROLPLANE_DIR/kube-apiserver" --version >&2
# sed reads all of the output: head would close the pipe early, and under pipefail
# etcd dying of SIGPIPE would fail the build.
"$CONTROLPLANE_DIR/etcd" --version | sed -n 1p >&2
echo "$CONTROLPLANE_DIR"
