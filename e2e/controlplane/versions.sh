# Sourced by the control-plane scripts: the pinned versions (they must match the
# go.mod files beside this file) and the cache directory derived from them.
KUBE_VERSION=v1.37.2
ETCD_VERSION=v3.6.16
# Only its CustomResourceDefinitions (from the Go module's deploy/crds), so the
# API server can validate the Issuer and Certificate of deploy/overlays/cert-manager.
CERT_MANAGER_VERSION=v1.21.2
# Only its ServiceMonitor and PrometheusRule CRDs (example/prometheus-operator-crd),
# for the chart's monitoring objects.
PROMETHEUS_OPERATOR_VERSION=v0.85.0
# The chart and alert tooling (e2e/tests/chart.rs, e2e/tests/alerts.rs), from the
# go.mod files in helm/ and promtool/.
HELM_VERSION=v3.22.0
PROMETHEUS_VERSION=v0.316.0
CONTROLPLANE_DIR="${KUBE_HARDENER_CACHE:-$HOME/.cache/kube-hardener}/controlplane/${KUBE_VERSION}-etcd${ETCD_VERSION#v}"
CERT_MANAGER_CRDS_DIR="${KUBE_HARDENER_CACHE:-$HOME/.cache/kube-hardener}/cert-manager-crds/${CERT_MANAGER_VERSION}"
PROMETHEUS_OPERATOR_CRDS_DIR="${KUBE_HARDENER_CACHE:-$HOME/.cache/kube-hardener}/prometheus-operator-crds/${PROMETHEUS_OPERATOR_VERSION}"
TOOLS_DIR="${KUBE_HARDENER_CACHE:-$HOME/.cache/kube-hardener}/tools/helm-${HELM_VERSION}-prometheus-${PROMETHEUS_VERSION}"
