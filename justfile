# Developer recipes. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

kind_cluster := "kube-hardener"
image := "kube-hardener:dev"

# The whole suite as CI runs it: fmt, clippy, fast tests, e2e on a local control plane.
test:
    scripts/test.sh

# Only the end-to-end suite, against a throw-away local kube-apiserver + etcd.
e2e *ARGS:
    e2e/controlplane/build.sh >/dev/null
    e2e/controlplane/up.sh -- cargo test -p kube-hardener-e2e {{ARGS}}

# A local control plane for manual use (prints the KUBECONFIG to export; Ctrl-C stops it).
controlplane:
    e2e/controlplane/up.sh

# Pod CREATE latency with and without the webhook (BENCHMARKS.md, "End-to-end").
bench-e2e CREATES="1000":
    scripts/bench-e2e.sh {{CREATES}}

# Container image (needs a Docker engine).
image:
    docker build -t {{image}} .

# kind cluster from kind-config.yaml (needs Docker and kind).
kind-up:
    kind get clusters | grep -qx {{kind_cluster}} || kind create cluster --config kind-config.yaml --wait 120s

kind-down:
    kind delete cluster --name {{kind_cluster}}

# Deploys the self-signed overlay with the locally built image into the kind cluster.
kind-deploy: kind-up image
    kind load docker-image {{image}} --name {{kind_cluster}}
    work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT; \
    cp -r deploy "$work/deploy"; \
    cargo run -q -p kube-hardener -- certs --out-dir "$work/deploy/overlays/self-signed/generated"; \
    kubectl --context kind-{{kind_cluster}} apply --server-side -k "$work/deploy/overlays/local-image"
    kubectl --context kind-{{kind_cluster}} -n kube-hardener rollout status deployment/kube-hardener --timeout 180s

# The same e2e suite against kind, using the webhook deployed in the cluster.
# Each test registers that Service for its own namespace; the cluster-wide
# configuration is removed first so that tests of "no webhook" hold.
# local_server.rs needs a webhook process of its own on the API server's host
# and runs only against the local control plane (`just e2e`).
e2e-kind: kind-deploy
    kubectl --context kind-{{kind_cluster}} delete mutatingwebhookconfiguration kube-hardener --ignore-not-found
    kind export kubeconfig --name {{kind_cluster}} --kubeconfig "${TMPDIR:-/tmp}/kube-hardener-kind.kubeconfig"
    KUBECONFIG="${TMPDIR:-/tmp}/kube-hardener-kind.kubeconfig" \
    KUBE_HARDENER_E2E_WEBHOOK=service:kube-hardener/kube-hardener \
    KUBE_HARDENER_CERT_MANAGER_CRDS="$(source e2e/controlplane/versions.sh && e2e/controlplane/build.sh >/dev/null && echo "$CERT_MANAGER_CRDS_DIR")" \
    cargo test -p kube-hardener-e2e --test admission --test deploy
