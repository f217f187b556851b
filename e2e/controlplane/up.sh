#!/usr/bin/env bash
# Starts a throw-away control plane on loopback: etcd + kube-apiserver (with its
# built-in admission plugins, Pod Security Admission included), generated
# certificates, an admin kubeconfig; everything is torn down on exit, failure or Ctrl-C.
#
#   e2e/controlplane/up.sh                 # foreground: prints `export KUBECONFIG=...`, Ctrl-C stops
#   e2e/controlplane/up.sh -- CMD ARGS...  # runs CMD with KUBECONFIG set, then tears down;
#                                          # exits with CMD's status
#   e2e/controlplane/up.sh --node [-- CMD ARGS...]
#                                          # the same, plus one real node on this machine:
#                                          # containerd + runc + kubelet, with the
#                                          # kube-controller-manager and kube-scheduler
#                                          # (node.sh; needs root; exports KUBE_HARDENER_E2E_NODE)
#                                          # With KUBE_HARDENER_IMAGE_BIN=PATH the node also
#                                          # gets kh.test/kube-hardener:e2e built from that
#                                          # binary (exports KUBE_HARDENER_E2E_IMAGE)
#
# Binaries come from build.sh's cache (built first when missing). Environment:
#   KUBE_HARDENER_CACHE        cache root (see build.sh)
#   KUBE_HARDENER_KEEP_STATE=1 keep the state directory (logs, certificates) after teardown
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.sh
source "$here/versions.sh"

log() { printf '[controlplane/up] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

mode=foreground
with_node=0
if [[ "${1:-}" == "--node" ]]; then
    with_node=1
    shift
fi
if [[ $# -gt 0 ]]; then
    [[ "$1" == "--" ]] || die "usage: $0 [--node] [-- COMMAND ARGS...]"
    shift
    [[ $# -gt 0 ]] || die "usage: $0 [--node] [-- COMMAND ARGS...]: no command after --"
    mode=wrap
fi
# shellcheck source=node.sh
source "$here/node.sh"

command -v openssl >/dev/null 2>&1 || die "openssl is required to generate the control plane's certificates"
if [[ ! -x "$CONTROLPLANE_DIR/kube-apiserver" || ! -x "$CONTROLPLANE_DIR/etcd" || ! -d "$CERT_MANAGER_CRDS_DIR" ||
    ! -x "$TOOLS_DIR/helm" || ! -x "$TOOLS_DIR/promtool" || ! -d "$PROMETHEUS_OPERATOR_CRDS_DIR" ]] ||
    { ((with_node)) && [[ ! -x "$CONTROLPLANE_DIR/kubelet" || ! -x "$CONTROLPLANE_DIR/kube-scheduler" || ! -x "$CONTROLPLANE_DIR/kube-controller-manager" ]]; }; then
    if ((with_node)); then "$here/build.sh" --node >/dev/null; else "$here/build.sh" >/dev/null; fi
fi
((with_node)) && node_preflight

state="$(mktemp -d "${TMPDIR:-/tmp}/kube-hardener-controlplane.XXXXXX")"
pids=()

teardown() {
    local status=$?
    trap - EXIT INT TERM
    # Clean up as much as possible, whatever fails along the way.
    set +e
    ((with_node)) && node_teardown
    # The API server first, then its etcd. The state is thrown away, so a
    # process still draining after 3 s is killed rather than waited for.
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        stop_pid "${pids[$i]}" 30
    done
    if [[ -n "$(mounts_under "$state")" ]]; then
        # Deleting through a mount would delete what it shows; leave it to a human.
        log "error: mounts remain under $state, not deleting it:"
        mounts_under "$state" >&2
        ((status)) || status=1
    elif [[ "${KUBE_HARDENER_KEEP_STATE:-0}" == 1 ]]; then
        log "state kept in $state"
    else
        rm -rf "$state"
    fi
    log "control plane stopped"
    exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A port nothing listens on; the kernel hands out ephemeral ports above 32768,
# so picking below that avoids racing with outgoing connections. Every port
# handed out is recorded in $state/ports and never handed out again: the
# processes started in the background bind theirs only later, so the probe
# alone would not see them.
free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 12000))
        if grep -qx "$port" "$state/ports" 2>/dev/null; then continue; fi
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port" >>"$state/ports"
            echo "$port"
            return 0
        fi
    done
    die "no free loopback port found"
}

# stop_pid PID [TENTHS]: TERM, up to TENTHS tenths of a second (default 50),
# then KILL.
stop_pid() {
    kill -TERM "$1" 2>/dev/null || return 0
    for _ in $(seq 1 "${2:-50}"); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# Mount points under $1, deepest first (mountinfo escapes spaces as \040).
mounts_under() {
    awk -v prefix="$1/" 'index($5, prefix) == 1 { print $5 }' /proc/self/mountinfo | sort -r -u
}

show_log_tail() {
    log "last lines of $1:"
    tail -n 30 "$1" >&2 || true
}

# --- certificates -----------------------------------------------------------
pki="$state/pki"
mkdir -p "$pki"
(
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=kube-hardener-e2e-ca" \
        -keyout ca.key -out ca.crt 2>/dev/null
    # Serving certificate of the API server (loopback only).
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
        -keyout apiserver.key -out apiserver.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    # Admin client certificate: the system:masters group is cluster-admin under RBAC.
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-hardener-e2e-admin" \
        -keyout admin.key -out admin.csr 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >admin.ext
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile admin.ext -out admin.crt 2>/dev/null
    # The client certificate the API server presents to admission webhooks
    # (mutual TLS; see the admission configuration below). Its own CA, so a
    # webhook that trusts it trusts nothing else of this cluster.
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=kube-hardener-e2e-webhook-client-ca" \
        -keyout webhook-client-ca.key -out webhook-client-ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver-webhook-client" \
        -keyout webhook-client.key -out webhook-client.csr 2>/dev/null
    openssl x509 -req -in webhook-client.csr -CA webhook-client-ca.crt -CAkey webhook-client-ca.key \
        -CAcreateserial -days 2 -extfile admin.ext -out webhook-client.crt 2>/dev/null
    # Service-account token signing key.
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
    if ((with_node)); then node_certs; fi
) || die "generating certificates with openssl failed"

# The API server presents webhook-client.crt to every webhook it calls ("*").
# A webhook that does not ask for a client certificate never sees it.
cat >"$pki/webhook-kubeconfig.yaml" <<WEBHOOKKUBECONFIG
apiVersion: v1
kind: Config
users:
- name: "*"
  user:
    client-certificate: $pki/webhook-client.crt
    client-key: $pki/webhook-client.key
WEBHOOKKUBECONFIG
cat >"$pki/admission.yaml" <<ADMISSION
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: MutatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: $pki/webhook-kubeconfig.yaml
- name: ValidatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: $pki/webhook-kubeconfig.yaml
ADMISSION

# --- etcd ---------------------------------------------------------------------
etcd_port="$(free_port)"
etcd_peer_port="$(free_port)"
log "starting etcd ${ETCD_VERSION} on 127.0.0.1:${etcd_port}"
"$CONTROLPLANE_DIR/etcd" \
    --name=e2e \
    --data-dir="$state/etcd" \
    --listen-client-urls="http://127.0.0.1:${etcd_port}" \
    --advertise-client-urls="http://127.0.0.1:${etcd_port}" \
    --listen-peer-urls="http://127.0.0.1:${etcd_peer_port}" \
    --initial-advertise-peer-urls="http://127.0.0.1:${etcd_peer_port}" \
    --initial-cluster="e2e=http://127.0.0.1:${etcd_peer_port}" \
    --unsafe-no-fsync \
    --log-level=warn \
    >"$state/etcd.log" 2>&1 &
pids+=($!)

# --- kube-apiserver -------------------------------------------------------------
node_flags=()
if ((with_node)); then mapfile -t node_flags < <(node_apiserver_flags); fi
# Starts kube-apiserver on a fresh free port and writes the kubeconfig for it.
start_apiserver() {
    api_port="$(free_port)"
    log "starting kube-apiserver ${KUBE_VERSION} on https://127.0.0.1:${api_port}"
    # Webhook calls go to loopback: a proxy inherited from the environment must not
    # intercept them. A webhook named by its Service is called at the Service's
    # endpoints (aggregator routing), never at its ClusterIP: nothing here
    # routes ClusterIPs, so such a call would leave the machine.
    env -u HTTPS_PROXY -u https_proxy -u HTTP_PROXY -u http_proxy NO_PROXY='*' \
        "$CONTROLPLANE_DIR/kube-apiserver" \
        --etcd-servers="http://127.0.0.1:${etcd_port}" \
        --bind-address=127.0.0.1 \
        --advertise-address=127.0.0.1 \
        --endpoint-reconciler-type=none \
        --secure-port="$api_port" \
        --cert-dir="$pki" \
        --tls-cert-file="$pki/apiserver.crt" \
        --tls-private-key-file="$pki/apiserver.key" \
        --client-ca-file="$pki/ca.crt" \
        --service-account-issuer="https://127.0.0.1:${api_port}" \
        --service-account-key-file="$pki/sa.pub" \
        --service-account-signing-key-file="$pki/sa.key" \
        --service-cluster-ip-range=10.96.0.0/24 \
        --enable-aggregator-routing=true \
        --authorization-mode=Node,RBAC \
        --allow-privileged=true \
        --disable-admission-plugins=DefaultStorageClass,StorageObjectInUseProtection,PersistentVolumeClaimResize \
        --admission-control-config-file="$pki/admission.yaml" \
        "${node_flags[@]}" \
        --v=1 \
        >"$state/kube-apiserver.log" 2>&1 &
    pids+=($!)

    # --- kubeconfig -----------------------------------------------------------------
    kubeconfig="$state/kubeconfig"
    cat >"$kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: kube-hardener-e2e
  cluster:
    server: https://127.0.0.1:${api_port}
    certificate-authority: $pki/ca.crt
users:
- name: admin
  user:
    client-certificate: $pki/admin.crt
    client-key: $pki/admin.key
contexts:
- name: kube-hardener-e2e
  context:
    cluster: kube-hardener-e2e
    user: admin
current-context: kube-hardener-e2e
KUBECONFIG
}
start_apiserver
api_attempts=1

# --- wait for readiness -----------------------------------------------------------
log "waiting for /readyz"
deadline=$((SECONDS + 120))
until curl --silent --fail --max-time 2 --noproxy '*' \
    --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://127.0.0.1:${api_port}/readyz" >/dev/null 2>&1; do
    for i in "${!pids[@]}"; do
        if ! kill -0 "${pids[$i]}" 2>/dev/null; then
            # Another process may take a free port between the probe and the
            # bind: a new port, a bounded number of times.
            if [[ $i == 1 ]] && ((api_attempts < 3)) &&
                grep -F "address already in use" "$state/kube-apiserver.log" >/dev/null; then
                log "port ${api_port} was taken before kube-apiserver bound it; another port"
                api_attempts=$((api_attempts + 1))
                unset 'pids[1]'
                start_apiserver
                pids=("${pids[@]}")
                continue 2
            fi
            if [[ $i == 0 ]]; then show_log_tail "$state/etcd.log"; else show_log_tail "$state/kube-apiserver.log"; fi
            die "a control-plane process exited during start-up"
        fi
    done
    if ((SECONDS > deadline)); then
        show_log_tail "$state/kube-apiserver.log"
        die "kube-apiserver not ready within 120 s"
    fi
    sleep 0.5
done
log "control plane ready in ${SECONDS}s (state: $state)"
if ((with_node)); then
    node_up
    log "cluster with node ready in ${SECONDS}s"
    export KUBE_HARDENER_E2E_NODE="$NODE_NAME"
    # The loopback registry with the node's test images, and its CA.
    export KUBE_HARDENER_E2E_REGISTRY="$NODE_REGISTRY"
    export KUBE_HARDENER_E2E_REGISTRY_CA="$pki/ca.crt"
fi
# Where pods on the host network reach the API server (for in-cluster installs).
export KUBE_HARDENER_E2E_API_SERVER="127.0.0.1:${api_port}"

export KUBECONFIG="$kubeconfig"
# kubectl, and helm and promtool for the chart and alert suites.
export PATH="$CONTROLPLANE_DIR:$TOOLS_DIR:$PATH"
# deploy's e2e test installs these when the cluster lacks cert-manager.
export KUBE_HARDENER_CERT_MANAGER_CRDS="$CERT_MANAGER_CRDS_DIR"
# The chart test installs these for its ServiceMonitor and PrometheusRule.
export KUBE_HARDENER_PROMETHEUS_OPERATOR_CRDS="$PROMETHEUS_OPERATOR_CRDS_DIR"
# The CA of the client certificate the API server presents to webhooks, and
# a certificate of another CA, for the mutual-TLS test.
export KUBE_HARDENER_E2E_WEBHOOK_CLIENT_CA="$pki/webhook-client-ca.crt"

if [[ $mode == wrap ]]; then
    set +e
    "$@"
    status=$?
    set -e
    if [[ $status -ne 0 ]]; then
        log "command exited with status $status"
    fi
    exit "$status"
fi

if ((with_node)); then
    printf 'Node %s is Ready (kubelet %s, %s); logs in %s.\n' "$NODE_NAME" "$KUBE_VERSION" \
        "$(containerd --version | awk '{print "containerd " $3}')" "$state"
fi
cat <<MSG
Control plane is up. In another shell:

    export KUBECONFIG=$kubeconfig
    export PATH=$CONTROLPLANE_DIR:$TOOLS_DIR:\$PATH   # kubectl ${KUBE_VERSION}, helm ${HELM_VERSION}, promtool
    export KUBE_HARDENER_CERT_MANAGER_CRDS=$CERT_MANAGER_CRDS_DIR   # for e2e/tests/deploy.rs
    export KUBE_HARDENER_PROMETHEUS_OPERATOR_CRDS=$PROMETHEUS_OPERATOR_CRDS_DIR   # for e2e/tests/chart.rs

Press Ctrl-C to stop it.
MSG
# Exit (and tear down) as soon as any process dies.
wait -n "${pids[@]}" "${node_pids[@]}"
show_log_tail "$state/kube-apiserver.log"
die "a control-plane process exited"
