#!/usr/bin/env bash
# The whole test suite, as CI runs it:
#   1. cargo fmt --check and clippy (warnings are errors) over the workspace;
#   2. the fast suites (`cargo test`: unit, golden, property and CLI tests);
#   3. the end-to-end suite against a real kube-apiserver + etcd started on
#      loopback (built from pinned Go modules on first use, then cached);
#   4. the node suites: the same control plane plus a real node on this machine
#      (kubelet + containerd + runc, kube-controller-manager, kube-scheduler),
#      where hardened pods are started, and where kube-hardener itself is
#      installed from its chart and its kustomize base, in an image assembled
#      from the release binary. Needs root and Debian's containerd, runc,
#      containernetworking-plugins and busybox-static (.ci/run installs them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=$SECONDS
step() { printf '\n==> [%4ds] %s\n' "$((SECONDS - started))" "$*"; }

# Every `cargo test` run is copied here so the last line can total them all.
results="$(mktemp)"
trap 'rm -f "$results"' EXIT

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets --all-features -- -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo test (fast suites)"
cargo test 2>&1 | tee -a "$results"

step "building kube-hardener for the end-to-end suite"
cargo build -p kube-hardener
# The suite runs exactly this binary (and builds nothing itself).
export KUBE_HARDENER_BIN="$PWD/target/debug/kube-hardener"

step "control plane: kube-apiserver, kubectl, etcd, kubelet, kube-scheduler, kube-controller-manager (cached after the first build)"
e2e/controlplane/build.sh --node >/dev/null

step "end-to-end suite (cargo test -p kube-hardener-e2e) against the local control plane"
e2e/controlplane/up.sh -- cargo test -p kube-hardener-e2e 2>&1 | tee -a "$results"

step "release build of kube-hardener, for the image the node runs it from"
cargo build --release -p kube-hardener
export KUBE_HARDENER_IMAGE_BIN="$PWD/target/release/kube-hardener"

step "node suites (cargo test -p kube-hardener-e2e --features node --test node --test in_cluster) on the local cluster with a node"
e2e/controlplane/up.sh --node -- cargo test -p kube-hardener-e2e --features node --test node --test in_cluster 2>&1 | tee -a "$results"

step "all suites passed"
# One closing line over every suite: "summary: N passed, N failed".
awk '/^test result:/ { passed += $4; failed += $6 }
     END { printf "summary: %d passed, %d failed\n", passed, failed }' "$results"
