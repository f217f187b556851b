# Sourced by up.sh in --node mode: one real node on this machine (containerd +
# runc + kubelet), plus the kube-controller-manager and kube-scheduler that a node
# needs. Everything it creates outside the state directory is named here, and
# node_teardown removes all of it, also after a failed start.
#
# The network never leaves the machine:
#   - pods get an isolated bridge: no gateway, no masquerade, no routes, and
#     forwarding stays as it was (off);
#   - the node's address is NODE_IP/32 on that bridge (the kubelet refuses a
#     loopback node IP, and this kernel has no dummy interfaces). It is outside the
#     pod subnet and pods have no route to it; the API server reaches the kubelet
#     there, from this machine.
# 198.18.0.0/15 is reserved for network benchmarking (RFC 2544), so it is
# unlikely to clash with a network this machine is really on.

NODE_NAME=kh-e2e-node
NODE_IP=198.18.0.1
POD_SUBNET=198.18.1.0/24
POD_BRIDGE=kh-br0
NODE_LOCK=/run/lock/kube-hardener-e2e-node.lock
# Images the node suite runs (images.sh); the sandbox image is containerd's pause.
NODE_PAUSE_IMAGE=kh.test/pause:1
# kube-hardener itself, from KUBE_HARDENER_IMAGE_BIN, for the in-cluster suite.
NODE_HARDENER_IMAGE=kh.test/kube-hardener:e2e

node_pids=()
node_created=()   # host paths that did not exist before this run, removed at teardown
node_ip_forward=""

node_preflight() {
    [[ $EUID -eq 0 ]] || die "--node needs root (network interfaces, mounts, cgroups)"
    local tool
    for tool in containerd containerd-shim-runc-v2 runc ctr ip findmnt flock docker-registry curl; do
        command -v "$tool" >/dev/null 2>&1 || die "--node needs $tool (Debian: containerd runc iproute2 util-linux docker-registry curl)"
    done
    [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] ||
        die "--node needs the CNI plugins in /usr/lib/cni (Debian: containernetworking-plugins)"
    for tool in kubelet kube-scheduler kube-controller-manager; do
        [[ -x "$CONTROLPLANE_DIR/$tool" ]] || die "$CONTROLPLANE_DIR/$tool is missing (build.sh --node builds it)"
    done
    mkdir -p "$(dirname "$NODE_LOCK")"
    exec 9>"$NODE_LOCK"
    flock -n 9 || die "another local cluster with a node is running (lock $NODE_LOCK)"
    # What a killed earlier run may have left: same names, so remove them.
    local link
    if ip link show "$POD_BRIDGE" >/dev/null 2>&1; then
        log "removing $POD_BRIDGE left by an earlier run"
        node_delete_links
    fi
    local path
    for path in /run/containerd /var/lib/cni /var/log/containers; do
        [[ -e "$path" ]] || node_created+=("$path")
    done
    node_ip_forward="$(cat /proc/sys/net/ipv4/ip_forward)"
}

# node_certs: run inside the pki directory by up.sh.
node_certs() {
    local name subject
    for pair in "kubelet-client:/O=system:nodes/CN=system:node:$NODE_NAME" \
        "controller-manager:/CN=system:kube-controller-manager" \
        "scheduler:/CN=system:kube-scheduler" \
        "apiserver-kubelet-client:/CN=kube-apiserver-kubelet-client"; do
        name="${pair%%:*}"
        subject="${pair#*:}"
        openssl req -newkey rsa:2048 -nodes -subj "$subject" -keyout "$name.key" -out "$name.csr" 2>/dev/null
        openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
            -extfile admin.ext -out "$name.crt" 2>/dev/null
    done
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-hardener-e2e-registry" -keyout registry.key -out registry.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >registry.ext
    openssl x509 -req -in registry.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile registry.ext -out registry.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$NODE_NAME" -keyout kubelet.key -out kubelet.csr 2>/dev/null
    printf 'subjectAltName=IP:%s,DNS:%s\nextendedKeyUsage=serverAuth\n' "$NODE_IP" "$NODE_NAME" >kubelet.ext
    openssl x509 -req -in kubelet.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile kubelet.ext -out kubelet.crt 2>/dev/null
}

# API server flags for a cluster with a node: it calls the kubelet (logs, exec)
# with a client certificate and checks the kubelet's serving certificate.
node_apiserver_flags() {
    printf '%s\n' \
        "--kubelet-client-certificate=$pki/apiserver-kubelet-client.crt" \
        "--kubelet-client-key=$pki/apiserver-kubelet-client.key" \
        "--kubelet-certificate-authority=$pki/ca.crt" \
        "--kubelet-preferred-address-types=InternalIP"
}

# write_kubeconfig FILE NAME: a kubeconfig using $pki/NAME.{crt,key}.
write_kubeconfig() {
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:${api_port}
    certificate-authority: $pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $pki/$2.crt
    client-key: $pki/$2.key
contexts:
- name: local
  context: {cluster: local, user: $2}
current-context: local
EOF
}

node_network() {
    ip link add "$POD_BRIDGE" type bridge
    ip addr add "$NODE_IP/32" dev "$POD_BRIDGE"
    ip link set "$POD_BRIDGE" up
    mkdir -p "$state/cni/net.d" "$state/cni/ipam"
    # The bridge plugin attaches pods to $POD_BRIDGE. isGateway false: it adds no
    # address of its own, and the pods get no default route.
    cat >"$state/cni/net.d/10-kube-hardener-e2e.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "kube-hardener-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$POD_BRIDGE",
      "isGateway": false,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": false,
      "ipam": {
        "type": "host-local",
        "dataDir": "$state/cni/ipam",
        "ranges": [[{"subnet": "$POD_SUBNET"}]],
        "routes": []
      }
    },
    {"type": "loopback"}
  ]
}
EOF
}

node_start_containerd() {
    local dir="$state/containerd"
    mkdir -p "$dir"
    cat >"$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$NODE_PAUSE_IMAGE"
  # This VM refuses negative oom_score_adj even to root; without this runc fails
  # with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$state/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$dir/runc"
EOF
    log "starting containerd $(containerd --version | awk '{print $3}') (socket $dir/containerd.sock)"
    env -u HTTPS_PROXY -u https_proxy -u HTTP_PROXY -u http_proxy \
        containerd --config "$dir/config.toml" >"$state/containerd.log" 2>&1 &
    node_pids+=($!)
    local deadline=$((SECONDS + 30))
    until ctr --address "$dir/containerd.sock" version >/dev/null 2>&1; do
        kill -0 "${node_pids[-1]}" 2>/dev/null || { show_log_tail "$state/containerd.log"; die "containerd exited during start-up"; }
        ((SECONDS < deadline)) || { show_log_tail "$state/containerd.log"; die "containerd not answering within 30 s"; }
        sleep 0.2
    done
    "$here/images.sh" "$state/images.tar" ${KUBE_HARDENER_IMAGE_BIN:+"$KUBE_HARDENER_IMAGE_BIN"} >"$state/images.txt"
    ctr --address "$dir/containerd.sock" --namespace k8s.io images import --all-platforms "$state/images.tar" >"$state/images-import.log" 2>&1 ||
        { show_log_tail "$state/images-import.log"; die "importing the test images into containerd failed"; }
    log "imported $(wc -l <"$state/images.txt") test images"
    if grep -qx "$NODE_HARDENER_IMAGE" "$state/images.txt"; then
        export KUBE_HARDENER_E2E_IMAGE="$NODE_HARDENER_IMAGE"
    fi
}

# A real registry on loopback holding the same test images, so that image
# lookups (images.resolve) see what the node runs: Debian's docker-registry
# (distribution 2.8) with TLS from the cluster CA. containerd also knows each
# image under its registry name, so pods use it with imagePullPolicy: Never.
node_start_registry() {
    local port dir="$state/registry" image name
    port="$(free_port)"
    mkdir -p "$dir"
    cat >"$dir/config.yml" <<REGISTRY
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
http:
  addr: 127.0.0.1:$port
  tls:
    certificate: $pki/registry.crt
    key: $pki/registry.key
REGISTRY
    log "starting docker-registry on 127.0.0.1:$port"
    env -u HTTPS_PROXY -u https_proxy -u HTTP_PROXY -u http_proxy \
        docker-registry serve "$dir/config.yml" >"$state/registry.log" 2>&1 &
    node_pids+=($!)
    local deadline=$((SECONDS + 20))
    until curl --silent --max-time 2 --noproxy '*' --cacert "$pki/ca.crt" "https://127.0.0.1:$port/v2/" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { show_log_tail "$state/registry.log"; die "the registry did not answer within 20 s"; }
        sleep 0.2
    done
    NODE_REGISTRY="127.0.0.1:$port"
    # ctr speaks plain HTTP to loopback registries unless a hosts.toml says
    # otherwise.
    mkdir -p "$dir/hosts/$NODE_REGISTRY"
    printf 'server = "https://%s"\n\n[host."https://%s"]\n  capabilities = ["pull", "resolve", "push"]\n  ca = "%s"\n' \
        "$NODE_REGISTRY" "$NODE_REGISTRY" "$pki/ca.crt" >"$dir/hosts/$NODE_REGISTRY/hosts.toml"
    while read -r image; do
        # Image lookups are tested on the busybox images only.
        [[ "$image" == "$NODE_HARDENER_IMAGE" ]] && continue
        name="$NODE_REGISTRY/kh/${image#kh.test/}"
        ctr --address "$state/containerd/containerd.sock" --namespace k8s.io images tag "$image" "$name" >/dev/null
        ctr --address "$state/containerd/containerd.sock" --namespace k8s.io images push \
            --hosts-dir "$dir/hosts" "$name" >>"$state/images-push.log" 2>&1 ||
            { show_log_tail "$state/images-push.log"; die "pushing $name failed"; }
    done <"$state/images.txt"
    log "pushed the test images to $NODE_REGISTRY/kh/"
}

# start_component BINARY NAME ARGS...: a control-plane component with the
# kubeconfig of client certificate NAME, serving on a free loopback port, no
# leader election (there is one of each), plus ARGS.
start_component() {
    local binary="$1" name="$2" port
    shift 2
    write_kubeconfig "$pki/$name.kubeconfig" "$name"
    port="$(free_port)"
    log "starting $binary on 127.0.0.1:$port"
    "$CONTROLPLANE_DIR/$binary" \
        --kubeconfig="$pki/$name.kubeconfig" \
        --authentication-kubeconfig="$pki/$name.kubeconfig" \
        --authorization-kubeconfig="$pki/$name.kubeconfig" \
        --bind-address=127.0.0.1 --secure-port="$port" \
        --cert-dir="$state/$name" \
        --leader-elect=false \
        "$@" \
        --v=1 >"$state/$binary.log" 2>&1 &
    node_pids+=($!)
}

node_start_controllers() {
    start_component kube-controller-manager controller-manager \
        --use-service-account-credentials=true \
        --service-account-private-key-file="$pki/sa.key" \
        --root-ca-file="$pki/ca.crt"
    start_component kube-scheduler scheduler
}

node_start_kubelet() {
    local dir="$state/kubelet" port healthz
    mkdir -p "$dir" "$state/pod-logs"
    : >"$state/resolv.conf" # pods get no name servers
    write_kubeconfig "$pki/kubelet.kubeconfig" kubelet-client
    port="$(free_port)"
    healthz="$(free_port)"
    cat >"$state/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz
tlsCertFile: $pki/kubelet.crt
tlsPrivateKeyFile: $pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $pki/ca.crt}
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: unix://$state/containerd/containerd.sock
# This machine: cgroup v1, no systemd, swap allowed, nothing reserved.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
enforceNodeAllocatable: []
resolvConf: $state/resolv.conf
podLogsDir: $state/pod-logs
clusterDomain: cluster.local
# The test images are imported, never pulled: keep them whatever the disk use.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
serializeImagePulls: false
# Secret volumes are refreshed at each pod sync: a renewed certificate reaches
# the webhook pods within seconds instead of a minute.
syncFrequency: 10s
rotateCertificates: false
serverTLSBootstrap: false
EOF
    log "starting kubelet $KUBE_VERSION as node $NODE_NAME ($NODE_IP:$port)"
    env -u HTTPS_PROXY -u https_proxy -u HTTP_PROXY -u http_proxy \
        "$CONTROLPLANE_DIR/kubelet" \
        --config="$state/kubelet.yaml" \
        --kubeconfig="$pki/kubelet.kubeconfig" \
        --root-dir="$dir" \
        --node-ip="$NODE_IP" \
        --hostname-override="$NODE_NAME" \
        --v=1 >"$state/kubelet.log" 2>&1 &
    node_pids+=($!)
}

node_wait_ready() {
    local deadline=$((SECONDS + 240)) ready=""
    log "waiting for node $NODE_NAME to be Ready"
    until [[ "$ready" == True ]]; do
        local pid
        for pid in "${node_pids[@]}"; do
            if ! kill -0 "$pid" 2>/dev/null; then
                show_log_tail "$state/kubelet.log"
                die "a node process exited during start-up (logs in $state)"
            fi
        done
        if ((SECONDS > deadline)); then
            show_log_tail "$state/kubelet.log"
            die "node $NODE_NAME not Ready within 240 s"
        fi
        sleep 1
        ready="$(KUBECONFIG="$kubeconfig" "$CONTROLPLANE_DIR/kubectl" get node "$NODE_NAME" \
            -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)"
    done
    log "node $NODE_NAME Ready"
}

node_up() {
    node_network
    node_start_containerd
    node_start_registry
    node_start_controllers
    node_start_kubelet
    node_wait_ready
}

node_delete_links() {
    local link
    # Host ends of pod veths whose namespaces outlived their pods.
    for link in $(ip -o link show master "$POD_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
        ip link delete "$link" 2>/dev/null || true
    done
    ip link delete "$POD_BRIDGE" 2>/dev/null || true
}

node_teardown() {
    local i pid
    # The kubelet first, so it restarts nothing; the scheduler and controllers.
    for ((i = ${#node_pids[@]} - 1; i >= 1; i--)); do
        stop_pid "${node_pids[$i]}"
    done
    # Every container runc started for this node, then the shims, then containerd.
    local runc_root="$state/containerd/runc/k8s.io" id
    if [[ -d "$runc_root" ]]; then
        for id in $(runc --root "$runc_root" list -q 2>/dev/null); do
            runc --root "$runc_root" kill --all "$id" KILL 2>/dev/null || true
        done
        for id in $(runc --root "$runc_root" list -q 2>/dev/null); do
            runc --root "$runc_root" delete --force "$id" 2>/dev/null || true
        done
    fi
    for pid in $(pgrep -f -- "-address $state/containerd/containerd.sock" 2>/dev/null); do
        stop_pid "$pid"
    done
    ((${#node_pids[@]})) && stop_pid "${node_pids[0]}"
    # Sandbox shm, network namespaces, snapshots, pod volumes: all under $state.
    local mount
    for _ in 1 2 3; do
        for mount in $(mounts_under "$state"); do
            umount "$(printf '%b' "$mount")" 2>/dev/null || umount -l "$(printf '%b' "$mount")" 2>/dev/null || true
        done
        [[ -z "$(mounts_under "$state")" ]] && break
        sleep 0.5
    done
    # The kubelet's pod cgroups (cgroupfs driver, cgroup v1): empty now.
    local controller
    for controller in /sys/fs/cgroup/*/; do
        [[ -d "${controller}kubepods" ]] && find "${controller}kubepods" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    node_delete_links
    if [[ -n "$node_ip_forward" && "$(cat /proc/sys/net/ipv4/ip_forward)" != "$node_ip_forward" ]]; then
        echo "$node_ip_forward" >/proc/sys/net/ipv4/ip_forward
        log "restored net.ipv4.ip_forward=$node_ip_forward"
    fi
    # The kubelet links pod logs from /var/log/containers; containerd keeps shim
    # sockets under /run/containerd and go-cni its cache under /var/lib/cni.
    if [[ -d /var/log/containers ]]; then
        find /var/log/containers -maxdepth 1 -type l -lname "$state/*" -delete 2>/dev/null || true
    fi
    local path
    for path in "${node_created[@]}"; do
        rm -rf "$path"
    done
    rm -f "$NODE_LOCK"
}
