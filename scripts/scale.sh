#!/usr/bin/env bash
# Scale test of the shared store: N replicas of token-sidecar (--threads 1 each) sharing one
# token profile through one redis-server, against the RingCentral double (session cap and auth
# rate limit on, 30-second tokens: a refresh cycle every 12-15 s), each under a steady request
# load. Runs 10 replicas, then N, and prints one table: replicas, token requests, refresh
# cycles, Redis round trips per replica per minute (INFO commandstats, and by command), memory
# per replica (VmRSS min/median/max, VmHWM max) and failed requests. Fails when a check of
# tests/scale.rs fails: more than one token request per cycle or one login, a failed request,
# Redis round trips over the cost model's bound or growing with N, a replica over 64 MiB.
#
#   scripts/scale.sh           # 10, then 50 replicas (about 4 minutes)
#   scripts/scale.sh 20        # 10, then 20
#
# Builds the release binary first (`cargo build --release`): the replicas run it, not the
# tests' debug build. Environment: SCALE_CYCLES (refresh cycles in each measuring window,
# default 4), SCALE_RPS (requests a second per replica, default 10). Needs redis-server and
# Linux (/proc).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

n="${1:-50}"
case "$n" in
  ''|*[!0-9]*|0) echo "usage: $0 [REPLICAS]" >&2; exit 64 ;;
esac
export SCALE_REPLICAS="$n"

command -v redis-server >/dev/null 2>&1 || {
  echo "redis-server is required (scripts/test.sh installs it)" >&2
  exit 1
}
# Every replica holds a few descriptors of the test process (its stderr, client and admin
# connections, its upstream connections to the API double).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "== cargo build --release"
cargo build --release --locked || exit 1

log="$(mktemp "${TMPDIR:-/tmp}/token-sidecar-scale.XXXXXX")"
trap 'rm -f "$log"' EXIT

echo "== scale: 10, then ${n} replicas"
start=$(date +%s)
cargo test --locked --features dev --test scale -- --ignored --nocapture --test-threads=1 \
  many_replicas_cost_the_same_per_replica 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}

echo
echo "== scale summary ($(( $(date +%s) - start )) s, exit status $rc)"
if grep -q '^scale: summary$' "$log"; then
  sed -n '/^scale: summary$/,$p' "$log" | grep '^scale: ' | sed '1d; s/^scale: //'
else
  grep '^scale: ' "$log" | sed 's/^scale: //'
  echo "the scale test did not run to its end (see above)"
  [ "$rc" -ne 0 ] || rc=1
fi
exit "$rc"
