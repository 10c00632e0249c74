#!/usr/bin/env bash
# Soak test of token-sidecar: sustained load through two sidecars for SECONDS (default 300)
# while their tokens rotate (a token file replaced every second; OAuth tokens refreshed every
# ~2 s) and the token endpoint fails now and then. Checks zero lost requests, flat memory
# (VmRSS sampled every second) and no growth in open file descriptors.
#
#   scripts/soak.sh            # 5 minutes
#   scripts/soak.sh 30         # the short version, for CI
#
# Environment: SOAK_WORKERS (per route, default 4), SOAK_FAULT_EVERY (seconds, default 5),
# SOAK_OAUTH_TTL (seconds, default 4), SOAK_RELEASE=1 to build with --release. Linux only
# (reads /proc). Prints one line per check, ending with `N passed, M failed`; exits non-zero
# when a check fails.
set -uo pipefail
cd "$(dirname "$0")/.."

secs="${1:-300}"
case "$secs" in
  ''|*[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 64 ;;
esac
export SOAK_SECONDS="$secs"

log="$(mktemp "${TMPDIR:-/tmp}/token-sidecar-soak.XXXXXX")"
trap 'rm -f "$log"' EXIT

echo "== soak: ${secs} s (building first)"
# --features dev: the same build as the test command's `cargo test` (nothing to rebuild).
cargo test ${SOAK_RELEASE:+--release} --locked --features dev --test soak -- --ignored --nocapture --test-threads=1 \
  2>&1 | tee "$log"
rc=${PIPESTATUS[0]}

echo
echo "== soak summary"
grep -E '^soak: (PASS|FAIL) ' "$log" | sed 's/^soak: //'
if final="$(grep -E '^soak: [0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1)"; then
  echo "${final#soak: }"
else
  echo "the soak did not run to its end (see above)"
  echo "0 passed, 1 failed"
  [ "$rc" -ne 0 ] || rc=1
fi
exit "$rc"
