#!/usr/bin/env bash
# Pod create-to-Running latency on the local node, with and without the webhook
# (BENCHMARKS.md, "Pods on a real node"). Usage: scripts/bench-node.sh [PODS=100]
# Needs what the node suite needs (root, containerd, runc, CNI plugins, busybox-static).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "==> release build of kube-hardener (the server under test)" >&2
cargo build --release -p kube-hardener
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp target/release/kube-hardener "$work/kube-hardener"
export KUBE_HARDENER_BIN="$work/kube-hardener"
cargo build --release -p kube-hardener-e2e --example start_latency
cp target/release/examples/start_latency "$work/start_latency"
e2e/controlplane/build.sh --node >/dev/null
echo "==> $(nproc) cores, $(uname -srm); $("$KUBE_HARDENER_BIN" --version)" >&2
e2e/controlplane/up.sh --node -- "$work/start_latency" "${1:-100}"
