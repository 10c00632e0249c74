#!/usr/bin/env python3
"""Checks of deploy/monitoring that promtool alone does not make.

    python3 scripts/monitoring_checks.py --promtool PATH

The dashboard (grafana-dashboard.json): Grafana 10+ schema, the `datasource` variable (a
Prometheus data source) used by every panel and query, the `route` and `token` variables from
label_values(...), unique panel ids, panels inside the 24 columns and not overlapping, the
panels the dashboard promises (request rate, own errors and upstream errors by kind, latency
p50/p90/p99, token expiry and validity, refreshes, 401 replays, shared store, rate limits,
client assertion), and every query valid PromQL (promtool, on the queries with Grafana's
variables replaced).
The rules (alerts.yaml): the alerts the README promises, each with a severity, a summary, a
description and a runbook (a file of this repository and a heading in it).
The unit tests (alerts-test.yaml): every alert has a case where it fires and one where it
does not.

One line per check, then "N passed, M failed"; exit 1 on failure. The Rust test
tests/monitoring.rs checks the metric and label names against a running sidecar.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy/monitoring/grafana-dashboard.json"
ALERTS = ROOT / "deploy/monitoring/alerts.yaml"
ALERTS_TEST = ROOT / "deploy/monitoring/alerts-test.yaml"

# The alerts README.md and docs/monitoring.md describe.
ALERT_NAMES = [
    "TokenSidecarTokenExpiringSoon", "TokenSidecarRefreshFailing", "TokenSidecarNoValidToken",
    "TokenSidecarClientAssertionExpiringSoon", "TokenSidecarClientAssertionExpired",
    "TokenSidecarUpstreamErrors", "TokenSidecarUpstreamRateLimited", "TokenSidecarRateLimitBlockedLong",
    "TokenSidecarRateLimitSharingDown", "TokenSidecarSharedStoreErrors", "TokenSidecarSharedEntriesRejected",
]
# What the dashboard must show: a metric (as written in a query) and what it is for.
DASHBOARD_METRICS = {
    "token_sidecar_requests_total": "request rate by route and status",
    "token_sidecar_rejected_requests_total": "the sidecar's own answers by kind",
    "token_sidecar_upstream_errors_total": "upstream errors by kind",
    "token_sidecar_request_duration_seconds_bucket": "latency percentiles",
    "token_sidecar_token_expiry_timestamp_seconds": "token time left",
    "token_sidecar_token_valid": "token validity",
    "token_sidecar_token_refreshes_total": "refreshes by trigger and result",
    "token_sidecar_unauthorized_retries_total": "401 replays by result",
    "token_sidecar_shared_store_operations_total": "shared store operations",
    "token_sidecar_shared_rejected_entries_total": "shared store rejected entries",
    "token_sidecar_shared_lock_acquisitions_total": "shared lock acquisitions",
    "token_sidecar_rate_limited_total": "rate limited by group and source",
    "token_sidecar_rate_limit_blocked_until_timestamp_seconds": "rate limit blocks",
    "token_sidecar_rate_limit_shared_up": "rate limits shared through Redis",
    "token_sidecar_client_assertion_expiry_timestamp_seconds": "client assertion time left",
}
DS_UID = "${datasource}"


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"ok   {name}")
        else:
            self.failed += 1
            print(f"FAIL {name}" + (f": {detail}" if detail else ""))
        return ok


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    out, fence = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            out.add(slug(line.lstrip("#")))
    return out


def runbook_problem(runbook: str | None) -> str | None:
    """Why `path#anchor` does not name a heading of a file of this repository, if it does not."""
    if not runbook:
        return "no runbook annotation"
    path, _, anchor = runbook.partition("#")
    f = ROOT / path
    if not f.is_file():
        return f"{path}: no such file"
    if anchor and anchor not in anchors(f):
        return f"{path} has no heading #{anchor}"
    return None


def all_panels(panels: list) -> list:
    out = []
    for p in panels or []:
        out.append(p)
        out.extend(all_panels(p.get("panels")))
    return out


def grafana_to_promql(expr: str) -> str:
    """A query with Grafana's variables replaced, for promtool."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)


def label_values_selector(query: str) -> str | None:
    m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", query, re.S)
    return m.group(1) if m else None


def check_dashboard(ck: Checks, promtool: str) -> None:
    text = DASHBOARD.read_text()
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        ck.check("dashboard: valid JSON", False, str(e))
        return
    ck.check("dashboard: valid JSON", True)
    ck.check("dashboard: Grafana 10+ schema (schemaVersion >= 38), a uid and a title, no numeric id",
             isinstance(d.get("schemaVersion"), int) and d["schemaVersion"] >= 38 and bool(d.get("uid"))
             and bool(d.get("title")) and d.get("id") is None,
             f"schemaVersion {d.get('schemaVersion')}, uid {d.get('uid')!r}, id {d.get('id')!r}")

    variables = {v.get("name"): v for v in (d.get("templating") or {}).get("list") or []}
    ds = variables.get("datasource") or {}
    ck.check("dashboard: a `datasource` variable of Prometheus data sources",
             ds.get("type") == "datasource" and ds.get("query") == "prometheus", json.dumps(ds))
    queries = []
    for name in ("route", "token"):
        v = variables.get(name) or {}
        q = (v.get("query") or {}).get("query") if isinstance(v.get("query"), dict) else v.get("query")
        sel = label_values_selector(q or "")
        ck.check(f"dashboard: a `{name}` variable from label_values(..., {name}), multi-value with All",
                 v.get("type") == "query" and sel is not None and q.rstrip().endswith(f"{name})")
                 and v.get("includeAll") is True and v.get("multi") is True, json.dumps(v))
    for name, v in variables.items():
        if v.get("type") != "query":
            continue
        q = (v.get("query") or {}).get("query") if isinstance(v.get("query"), dict) else v.get("query")
        ck.check(f"dashboard: variable ${name} queries the `datasource` variable",
                 (v.get("datasource") or {}).get("uid") == DS_UID, json.dumps(v.get("datasource")))
        sel = label_values_selector(q or "")
        if ck.check(f"dashboard: variable ${name} is label_values(SELECTOR, LABEL)", sel is not None, q or ""):
            queries.append((f"variable ${name}", sel))

    panels = all_panels(d.get("panels"))
    ids = [p.get("id") for p in panels]
    ck.check(f"dashboard: {len(panels)} panels, unique ids", len(ids) == len(set(ids)) and None not in ids,
             f"ids {ids}")
    boxes, bad_grid, bad_ds = [], [], []
    for p in panels:
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")) or g["x"] < 0 or g["x"] + g["w"] > 24:
            bad_grid.append(f"{p.get('title')!r} {g}")
            continue
        boxes.append((p.get("title"), g))
        if p.get("type") == "row":
            continue
        targets = p.get("targets") or []
        if (p.get("datasource") or {}).get("uid") != DS_UID or not targets:
            bad_ds.append(f"{p.get('title')!r}")
        for t in targets:
            if (t.get("datasource") or {}).get("uid") != DS_UID or not t.get("expr"):
                bad_ds.append(f"{p.get('title')!r} {t.get('refId')}")
            else:
                queries.append((f"panel {p.get('title')!r} {t.get('refId')}", t["expr"]))
    overlaps = [f"{a[0]!r} and {b[0]!r}" for i, a in enumerate(boxes) for b in boxes[i + 1:]
                if a[1]["x"] < b[1]["x"] + b[1]["w"] and b[1]["x"] < a[1]["x"] + a[1]["w"]
                and a[1]["y"] < b[1]["y"] + b[1]["h"] and b[1]["y"] < a[1]["y"] + a[1]["h"]]
    ck.check("dashboard: every panel within the 24 columns, none overlapping", not bad_grid and not overlaps,
             "; ".join(bad_grid + overlaps))
    ck.check("dashboard: every panel and query uses the `datasource` variable, every panel has queries",
             not bad_ds, ", ".join(bad_ds))

    exprs = " ".join(e for _, e in queries)
    for metric, what in DASHBOARD_METRICS.items():
        ck.check(f"dashboard: shows {what} ({metric})", re.search(rf"\b{metric}\b", exprs) is not None)
    quantiles = set(re.findall(r"histogram_quantile\(\s*([0-9.]+)\s*,(?:(?!histogram_quantile).)*?"
                               r"token_sidecar_request_duration_seconds_bucket", exprs, re.S))
    ck.check("dashboard: latency p50, p90 and p99", {"0.5", "0.9", "0.99"} <= quantiles, f"{sorted(quantiles)}")
    ck.check("dashboard: token time left is expiry - time()",
             re.search(r"token_sidecar_token_expiry_timestamp_seconds\{[^}]*\}(\s*>\s*0\s*\))?\s*-\s*time\(\)", exprs)
             is not None)

    # Every query through promtool, as the expressions of recording rules.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(e)} for i, (_, e) in enumerate(queries)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="dashboard-queries-") as f:
        yaml.safe_dump(rules, f)
        f.flush()
        r = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    detail = (r.stdout + r.stderr).strip().replace("\n", " | ")
    detail = re.sub(r"dashboard:query_(\d+)\b", lambda m: queries[int(m.group(1))][0], detail)
    ck.check(f"dashboard: all {len(queries)} queries are valid PromQL (promtool check rules)", r.returncode == 0, detail)


def check_rules(ck: Checks) -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    rules = [r for g in doc.get("groups") or [] for r in g.get("rules") or []]
    alerts = {r.get("alert"): r for r in rules if r.get("alert")}
    ck.check(f"rules: the {len(ALERT_NAMES)} alerts of docs/monitoring.md, no other",
             sorted(alerts) == sorted(ALERT_NAMES) and len(alerts) == len(rules),
             f"missing {sorted(set(ALERT_NAMES) - set(alerts))}, unexpected {sorted(set(alerts) - set(ALERT_NAMES))}")
    for name, r in alerts.items():
        ann = r.get("annotations") or {}
        problems = [k for k in ("summary", "description") if not (ann.get(k) or "").strip()]
        if (r.get("labels") or {}).get("severity") not in ("warning", "critical"):
            problems.append("severity warning or critical")
        rb = runbook_problem(ann.get("runbook"))
        if rb:
            problems.append(rb)
        elif ann["runbook"].partition("#")[2] != name.lower():
            problems.append(f"runbook {ann['runbook']} is not the alert's own section (#{name.lower()})")
        ck.check(f"rules: {name} has a severity, a summary, a description and a runbook that exists "
                 f"({ann.get('runbook')})", not problems, "; ".join(problems))

    tests = yaml.safe_load(ALERTS_TEST.read_text())
    ck.check("unit tests: rule_files is alerts.yaml", tests.get("rule_files") == ["alerts.yaml"],
             str(tests.get("rule_files")))
    fires, quiet = set(), set()
    for t in tests.get("tests") or []:
        for a in t.get("alert_rule_test") or []:
            (fires if a.get("exp_alerts") else quiet).add(a.get("alertname"))
    for name in ALERT_NAMES:
        ck.check(f"unit tests: {name} has a case where it fires and one where it does not",
                 name in fires and name in quiet,
                 ("never expected to fire" if name not in fires else "never expected silent"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--promtool", required=True, help="the promtool binary")
    a = ap.parse_args()
    ck = Checks()
    check_dashboard(ck, a.promtool)
    check_rules(ck)
    print(f"{ck.passed} passed, {ck.failed} failed")
    return 1 if ck.failed else 0


if __name__ == "__main__":
    sys.exit(main())
