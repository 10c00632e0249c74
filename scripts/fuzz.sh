#!/usr/bin/env bash
# Fuzzes token-sidecar's parsers for a bounded time, target after target.
#
#   ./scripts/fuzz.sh [SECONDS_PER_TARGET]      # default 60; e.g. 30 for a short CI run
#
# Targets (fuzz/fuzz_targets/, invariants in fuzz/checks.rs):
#   token_response  the token endpoint's body: parse_success, parse_error, parse_retry_after
#   config_file     a TOML config file: config::file::parse, config::file::expand, config::load
#   rewrite         upstream URL, request target and headers: proxy::rewrite
#
# Each target starts from the seeds committed in fuzz/corpus/<target>/ (never modified) and
# grows a working corpus in fuzz/work/corpus/<target>/ (git-ignored, reused by the next run).
# A crash, a timeout or an out-of-memory input is copied to tests/fuzz_regressions/<target>/,
# where `cargo test --test fuzz_regressions` replays it through the same checks, and the
# script fails. Reproduce one with `cargo +nightly fuzz run <target> <file>`.
#
# Needs a nightly toolchain (installed with rustup when missing) and cargo-fuzz (installed
# with `cargo install cargo-fuzz --locked` when missing).
#
# Environment: FUZZ_TARGETS="rewrite config_file" runs a subset; FUZZ_SANITIZER=address
# builds with AddressSanitizer (default none: the crate forbids unsafe code, and without it
# the fuzzer runs several times faster); CARGO_TARGET_DIR is honoured;
# FUZZ_KNOWN_BUGS=name,... skips the invariants of bugs already
# reported but not yet fixed (the `bug_*` tests in tests/fuzz_regressions.rs), so that a run
# can look for other ones.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

secs="${1:-60}"
case "$secs" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 64 ;;
esac
targets=(${FUZZ_TARGETS:-token_response config_file rewrite})
sanitizer="${FUZZ_SANITIZER:-none}"

command -v cargo >/dev/null 2>&1 || { echo "cargo is required: https://rustup.rs" >&2; exit 1; }
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "== installing the nightly toolchain (rustup)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

max_len() {
  case "$1" in
    config_file) echo 8192 ;;
    *) echo 4096 ;;
  esac
}

echo "== building the fuzz targets (sanitizer: $sanitizer)"
cargo +nightly fuzz build -s "$sanitizer"

mkdir -p fuzz/work
failed=()
summary=()
for t in "${targets[@]}"; do
  [ -d "fuzz/corpus/$t" ] || { echo "unknown target $t" >&2; exit 64; }
  work="$root/fuzz/work/corpus/$t"
  artifacts="$root/fuzz/artifacts/$t"
  log="$root/fuzz/work/$t.log"
  mkdir -p "$work" "$artifacts"
  stamp="$(mktemp)"
  echo "== fuzzing $t for ${secs}s (log: fuzz/work/$t.log)"
  set +e
  cargo +nightly fuzz run -s "$sanitizer" "$t" "$work" "$root/fuzz/corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len="$(max_len "$t")" \
    -dict="$root/fuzz/dict/$t.dict" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  corpus="$(find "$work" -type f | wc -l)"
  new=()
  while IFS= read -r -d '' f; do new+=("$f"); done \
    < <(find "$artifacts" -type f -newer "$stamp" -print0)
  rm -f "$stamp"
  if [ "$rc" -ne 0 ] || [ "${#new[@]}" -gt 0 ]; then
    failed+=("$t")
    mkdir -p "tests/fuzz_regressions/$t"
    for f in "${new[@]}"; do
      cp "$f" "tests/fuzz_regressions/$t/"
      echo "   kept tests/fuzz_regressions/$t/$(basename "$f")"
    done
    grep -E -A8 "panicked at|ERROR: libFuzzer|SUMMARY" "$log" | head -30 || true
    summary+=("$(printf '%-16s FAILED (exit %s) after %s execs' "$t" "$rc" "${execs:-?}")")
  else
    summary+=("$(printf '%-16s ok  %12s execs in %ss, corpus %s' "$t" "${execs:-?}" "$secs" "$corpus")")
  fi
done

echo "== summary"
printf '   %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzzing found problems in: ${failed[*]}" >&2
  echo "the inputs are under tests/fuzz_regressions/; replay: cargo test --test fuzz_regressions" >&2
  exit 1
fi
