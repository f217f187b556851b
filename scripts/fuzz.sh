#!/usr/bin/env bash
# Long fuzzing runs of the engine and of AdmissionReview decoding: proptest
# over arbitrary JSON, many more cases than CI runs. Not part of CI.
#
#   scripts/fuzz.sh [MINUTES]     # default 60; each round doubles the cases
#
# A failure prints the minimal input proptest shrank it to and stops; the
# case is also saved under the test's .proptest-regressions file, which CI
# then replays on every run. Results and hours run: docs/conformance.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

minutes="${1:-60}"
deadline=$((SECONDS + minutes * 60))
cases=20000
round=0
cargo test --release --no-run -p kube-hardener-engine --test fuzz -p kube-hardener-server --lib >/dev/null
while ((SECONDS < deadline)); do
    round=$((round + 1))
    printf '[fuzz] round %d: %d cases per property (%ds left)\n' "$round" "$cases" "$((deadline - SECONDS))"
    PROPTEST_CASES=$cases cargo test --release -q -p kube-hardener-engine --test fuzz
    PROPTEST_CASES=$cases cargo test --release -q -p kube-hardener-server --lib -- admission::tests
    cases=$((cases * 2))
done
printf '[fuzz] %d rounds in %d minutes, no failure\n' "$round" "$((SECONDS / 60))"
