#!/usr/bin/env bash
# Checks that the product binary holds the product only: built without features (as shipped,
# as the Dockerfile and bench/run.py build it), token-sidecar does not depend on the test
# doubles (token-sidecar-testkit), has none of their symbols, and its `dev` subcommand says
# that this build has no demo and how to run it (exit 2). Fast: `cargo tree` and the debug
# build that scripts/k8s-validate.sh makes anyway.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "check-release-deps: FAIL: $*" >&2; exit 1; }

# (a) The dependency graph, normal dependencies only, no features.
deps="$(cargo tree --locked -e normal --prefix none -p token-sidecar)"
if grep -q '^token-sidecar-testkit ' <<<"$deps"; then
  fail "token-sidecar depends on token-sidecar-testkit without the dev feature:
$(cargo tree --locked -e normal -p token-sidecar -i token-sidecar-testkit)"
fi
# The same query with the feature does find it: the check above can fail.
with_dev="$(cargo tree --locked -e normal --prefix none -p token-sidecar --features dev)"
grep -q '^token-sidecar-testkit ' <<<"$with_dev" \
  || fail "cargo tree --features dev does not show token-sidecar-testkit: the check is broken"
echo "ok: cargo tree: no token-sidecar-testkit without the dev feature"

# (b) The binary itself (debug, no features): no symbol of the doubles.
cargo build --locked --quiet --bin token-sidecar
target="$(cargo metadata --no-deps --format-version 1 \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
bin="$target/debug/token-sidecar"
symbols="$(nm -C "$bin")"
grep -q 'token_sidecar::' <<<"$symbols" || fail "$bin has no token_sidecar symbols: stripped?"
if found="$(grep -E 'token_sidecar_testkit|TokenServer' <<<"$symbols")"; then
  fail "$bin holds symbols of the test doubles:
$(head -n 5 <<<"$found")"
fi
echo "ok: $bin: no symbol of token_sidecar_testkit or TokenServer"

# (c) Its `dev` answers with one line on stderr and exit 2.
set +e
out="$("$bin" dev 2>&1 >/dev/null)"
rc=$?
set -e
[ "$rc" -eq 2 ] || fail "\`token-sidecar dev\` without the feature exited $rc, not 2 (stderr: $out)"
[ "$(wc -l <<<"$out")" -eq 1 ] && grep -qF 'cargo run --release --features dev -- dev' <<<"$out" \
  || fail "\`token-sidecar dev\` without the feature printed: $out"
echo "ok: token-sidecar dev (no feature): exit 2, \"$out\""
