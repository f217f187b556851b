#!/usr/bin/env bash
# Pod CREATE latency with and without the webhook, through a real API server
# (BENCHMARKS.md, "End-to-end"). Usage: scripts/bench-e2e.sh [CREATES=1000]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "==> release build of kube-hardener (the server under test)" >&2
cargo build --release -p kube-hardener
# A private copy: a later build in the same tree cannot swap it mid-run.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp target/release/kube-hardener "$work/kube-hardener"
export KUBE_HARDENER_BIN="$work/kube-hardener"
echo "==> benchmark client (release, so its own decoding stays small)" >&2
cargo build --release -p kube-hardener-e2e --example create_latency
e2e/controlplane/build.sh >/dev/null
echo "==> $(nproc) cores, $(uname -srm); $("$KUBE_HARDENER_BIN" --version)" >&2
cp target/release/examples/create_latency "$work/create_latency"
e2e/controlplane/up.sh -- "$work/create_latency" "${1:-1000}"
