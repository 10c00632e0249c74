#!/usr/bin/env bash
# Runs every test of token-sidecar: formatting, lints, unit and integration tests.
# Installs what the tests need when it is missing (Debian/Ubuntu, as root or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "== installing $* (apt-get)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

need cargo || { echo "cargo is required: https://rustup.rs" >&2; exit 1; }

# The shared-store tests start real Redis servers, sentinels and clusters.
need redis-server || apt_install redis-server
need redis-sentinel || apt_install redis-sentinel

# The Node example's test runs the RingCentral JS SDK against the sidecar.
if ! need node || ! need npm; then apt_install nodejs npm; fi
echo "== npm ci (examples/ringcentral-node)"
npm ci --prefix examples/ringcentral-node --no-audit --no-fund --loglevel=error
# The client-authentication tests (tests/client_auth.rs, tests/oidc_harness.rs) run a real
# authorization server, oidc-provider, from tests/oidc.
echo "== npm ci (tests/oidc)"
npm ci --prefix tests/oidc --no-audit --no-fund --loglevel=error

echo "== cargo fmt --check"
cargo fmt --all -- --check

# The workspace: the product and testkit/ (the test doubles, with their own tests). The `dev`
# feature builds the `token-sidecar dev` demo into the binary, for its test in tests/oauth.rs.
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets --features dev -- -D warnings
echo "== cargo clippy (the shipped build: no features)"
cargo clippy --locked -p token-sidecar --lib --bins -- -D warnings

echo "== cargo test"
cargo test --locked --workspace --all-targets --features dev -- --test-threads="${TEST_THREADS:-4}"

# The shipped binary (no features) holds no test double.
echo "== the release binary's dependencies"
./scripts/check-release-deps.sh

echo "== Kubernetes manifests and Helm chart"
./scripts/k8s-validate.sh

# .github/workflows/: jactionlint (actionlint's checks, shellcheck on the scripts), yamllint,
# and what ci.yml and release.yml must keep doing (ci.yml runs this very script).
echo "== GitHub Actions workflows"
./scripts/check-workflows.sh

# The alerting rules and the Grafana dashboard of deploy/monitoring (promtool: installed from
# Debian's prometheus package when missing; tests/monitoring.rs above checked their metrics).
echo "== monitoring: alerting rules and dashboard"
./scripts/monitoring-validate.sh

# The benchmark harness's own logic (the benchmark itself is `python3 bench/run.py`).
echo "== benchmark harness"
python3 -m unittest discover -s bench -p 'test_*.py'

# The long runs, shortened: fuzzing (default 60 s per target) and the soak (default 300 s).
echo "== fuzzing, ${FUZZ_SECONDS:-15} s per target"
./scripts/fuzz.sh "${FUZZ_SECONDS:-15}"
echo "== soak, ${SOAK_SECONDS:-30} s"
./scripts/soak.sh "${SOAK_SECONDS:-30}"
