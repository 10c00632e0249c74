#!/usr/bin/env bash
# Validates deploy/monitoring offline:
#   - promtool check rules deploy/monitoring/alerts.yaml
#   - promtool test rules deploy/monitoring/alerts-test.yaml (the alerts' unit tests)
#   - scripts/monitoring_checks.py: the Grafana dashboard (schema, variables, panels, every query
#     valid PromQL through promtool), the alerts' annotations and runbook links, and that every
#     alert has a unit test where it fires and one where it does not
# The metric and label names are checked against a running sidecar by tests/monitoring.rs (cargo
# test); the chart's PrometheusRule and dashboard ConfigMap by scripts/k8s-validate.sh.
#
# Needs python3 with PyYAML (installed with pip when missing). promtool: $PROMTOOL, or on the
# PATH, or installed by scripts/promtool.sh from Debian's prometheus package.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { echo "== $*"; }

if ! python3 -c 'import yaml' 2>/dev/null; then
  step "pip install pyyaml"
  pip_install=(python3 -m pip install --quiet --disable-pip-version-check pyyaml)
  "${pip_install[@]}" || "${pip_install[@]}" --break-system-packages
fi
PROMTOOL=$(./scripts/promtool.sh)
echo "$("$PROMTOOL" --version 2>&1 | head -1) ($PROMTOOL)"

step "promtool check rules deploy/monitoring/alerts.yaml"
"$PROMTOOL" check rules deploy/monitoring/alerts.yaml

step "promtool test rules deploy/monitoring/alerts-test.yaml"
"$PROMTOOL" test rules deploy/monitoring/alerts-test.yaml

step "scripts/monitoring_checks.py"
python3 scripts/monitoring_checks.py --promtool "$PROMTOOL"
