#!/usr/bin/env python3
"""Assertions on the Kubernetes manifests rendered by scripts/k8s-validate.sh.

    python3 scripts/k8s_checks.py RENDER_DIR [--binary PATH/TO/token-sidecar]

RENDER_DIR, written by k8s-validate.sh, holds:
  variants/NAME.yaml     one rendering (kustomize or helm) per variant listed in VARIANTS
  negative/NAME.rc|.out  renderings that must fail (secrets passed through values)
  fakes.json             the fake secret values fed to the fake-secret renderings

Every variant's sidecar, probes, security context, resources, config (only *_file paths and
${VAR} for secrets; keys and certificates as files of a Secret), workload identity tokens
(projected into the sidecar only, read-only, for the expected audience and lifetime), Secrets,
ServiceMonitor, NetworkPolicy, Grafana dashboard ConfigMap (the file of deploy/monitoring) and
PrometheusRule (runbooks that exist; with the chart's defaults, exactly
deploy/monitoring/alerts.yaml) are checked; with --binary, each rendered config.toml is also
validated by `token-sidecar check`, with temporary files standing in for the mounted Secret and
the projected token. One line per check, then "N passed, M failed"; exit 1 on failure.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

from monitoring_checks import runbook_problem

# What each rendering must contain. `secrets`: "placeholders" (an example Secret whose values
# all contain PLACEHOLDER), "none" (no Secret at all), "fake" (the user's own Secret, with
# the fake values, and those values nowhere else).
# `workload_identity`: the projected service-account token the sidecar (only) must get
# (audience, expirationSeconds, and which profiles use it: "assertion" or "subject"), the
# ServiceAccount the pods run as, and no Secret mounted at all. Without it, no variant may
# have such a token. `secret_files`: config keys ("token.NAME.KEY", "route.NAME.KEY") that must
# be there, each a file of the mounted Secret.
# `redis`: False (no [shared]), True (one server, as far as the rendering shows) or a dict:
# `topology` ("single", "sentinel", "cluster"), `nodes` (how many sentinels or cluster nodes),
# `master` (the Sentinel primary's name), `tls` (a dict: `ca`, where redis_ca_file must come
# from: ("secret", NAME) or ("configMap", NAME), NAME the Secret or ConfigMap; `ca_only`, whether
# that volume projects the CA's key alone (a Secret or ConfigMap of its own); `client_cert`,
# whether redis_client_cert_file and redis_client_key_file must be there), `ports` (the TCP
# ports the NetworkPolicy must open to Redis; default {6379}), `key_prefix`.
AZURE_AUDIENCE = "api://AzureADTokenExchange"
GCP_PROVIDER = "projects/123456789012/locations/global/workloadIdentityPools/my-pool/providers/my-cluster"
VARIANTS = {
    "deploy-base": dict(secrets="placeholders", service_monitor=True, network_policy=True, redis=False),
    "deploy-redis": dict(secrets="placeholders", service_monitor=True, network_policy=True, redis=True),
    "deploy-user-secret": dict(secrets="fake", service_monitor=True, network_policy=True, redis=False),
    "deploy-redis-user-secret": dict(secrets="fake", service_monitor=True, network_policy=True, redis=True),
    "deploy-redis-tls": dict(
        secrets="placeholders", service_monitor=True, network_policy=True,
        redis=dict(topology="single", tls=dict(ca=("secret", "token-sidecar-redis-tls"), client_cert=True))),
    "deploy-redis-sentinel": dict(
        secrets="placeholders", service_monitor=True, network_policy=True,
        redis=dict(topology="sentinel", nodes=3, master="mymaster", ports={6379, 26379})),
    "deploy-redis-cluster": dict(
        secrets="placeholders", service_monitor=True, network_policy=True,
        redis=dict(topology="cluster", nodes=3)),
    "deploy-no-example-secret": dict(secrets="none", service_monitor=True, network_policy=True, redis=False),
    "chart-ringcentral-jwt": dict(
        secrets="none", service_monitor=True, network_policy=True, redis=False,
        grafana_dashboard=dict(namespace="demo"),
        prometheus_rule=dict(namespace="demo", labels={"release": "kube-prometheus-stack"}, defaults=True)),
    "chart-monitoring": dict(
        secrets="none", service_monitor=True, network_policy=False, redis=False,
        grafana_dashboard=dict(namespace="monitoring", annotations={"grafana_folder": "token-sidecar"}),
        prometheus_rule=dict(
            namespace="demo", labels={"release": "kube-prometheus-stack"},
            runbook_base="https://git.example.com/platform/token-sidecar/-/blob/main",
            absent=["TokenSidecarUpstreamRateLimited"],
            exprs={"TokenSidecarTokenExpiringSoon": "time() < 480\n",
                   "TokenSidecarUpstreamErrors": "[10m]))\n> 0.1"},
            fors={"TokenSidecarTokenExpiringSoon": "2m", "TokenSidecarNoValidToken": "1m"},
            severities={"TokenSidecarNoValidToken": "page"})),
    "chart-redis": dict(secrets="none", service_monitor=False, network_policy=True, redis=True),
    "chart-redis-tls": dict(
        secrets="none", service_monitor=False, network_policy=True,
        redis=dict(topology="single", tls=dict(ca=("secret", "api-credentials"), client_cert=True))),
    "chart-redis-sentinel": dict(
        secrets="none", service_monitor=False, network_policy=True,
        redis=dict(topology="sentinel", nodes=3, master="mymaster", ports={6379, 26379}, key_prefix="rc-prod",
                   tls=dict(ca=("configMap", "redis-ca"), ca_only=True, client_cert=False))),
    "chart-redis-cluster": dict(
        secrets="none", service_monitor=False, network_policy=True,
        redis=dict(topology="cluster", nodes=3,
                   tls=dict(ca=("secret", "redis-cluster-tls"), ca_only=True, client_cert=False))),
    "chart-all-grants": dict(secrets="none", service_monitor=False, network_policy=False, redis=True),
    "chart-parent": dict(secrets="none", service_monitor=False, network_policy=False, redis=False),
    "deploy-workload-identity": dict(
        secrets="none", service_monitor=True, network_policy=True, redis=False,
        workload_identity=dict(audience=AZURE_AUDIENCE, expiration=3600, use={"azure": "assertion"},
                               service_account="example-app")),
    "chart-workload-identity": dict(
        secrets="none", service_monitor=False, network_policy=True, redis=False,
        workload_identity=dict(audience=AZURE_AUDIENCE, expiration=3600, use={"azure": "assertion"},
                               service_account="graph-reader")),
    "chart-gcp-token-exchange": dict(
        secrets="none", service_monitor=False, network_policy=False, redis=False,
        workload_identity=dict(audience=f"https://iam.googleapis.com/{GCP_PROVIDER}", expiration=1800,
                               use={"gcp": "subject"}, service_account="storage-reader")),
    "chart-private-key-jwt": dict(
        secrets="none", service_monitor=False, network_policy=True, redis=False,
        secret_files=["token.okta.jwt_signing_key_file", "token.keycloak.tls_client_cert_file",
                      "token.keycloak.tls_client_key_file", "token.keycloak.token_ca_file",
                      "route.ledger.upstream_tls_client_cert_file", "route.ledger.upstream_tls_client_key_file"]),
}

# Renderings that must be refused: each passes a fake secret the way a user might try to.
NEGATIVE = {
    "chart-client-secret-in-values": "a client secret in tokens.NAME.client_secret",
    "chart-jwt-in-values": "a JWT in tokens.NAME.assertion",
    "chart-password-in-values": "a password in tokens.NAME.password",
    "chart-static-token-in-values": "a token in tokens.NAME.static_token",
    "chart-redis-password-in-url": "a Redis password in redis.url",
    "chart-redis-password-in-sentinel-nodes": "a Redis URL with its password in redis.sentinel.nodes",
    "chart-redis-password-in-cluster-nodes": "a Redis URL with its password in redis.cluster.nodes",
    "chart-redis-client-key-in-values": "a Redis client key (PEM) in redis.tls",
    "chart-redis-ca-in-values": "a Redis CA (PEM) in redis.tls.ca",
    "chart-private-key-in-values": "a private key (PEM) in tokens.NAME.jwt_signing_key",
    "chart-private-key-in-params": "a private key (PEM) in tokens.NAME.params",
    "chart-tls-key-in-route": "a TLS client key (PEM) in routes[].upstream_tls_client_key",
    "chart-without-existing-secret": "no existingSecret",
}

SIDECAR = "token-sidecar"
ROOT = Path(__file__).resolve().parent.parent
# Where the release workflow publishes the image (.github/workflows/release.yml); every
# rendering runs it with the chart's appVersion as its tag (kustomize: deploy/base's newTag).
PUBLISHED_IMAGE = "ghcr.io/token-sidecar/token-sidecar"
ADMIN_PORT = 9090
CONFIG_PATH = "/etc/token-sidecar/config.toml"
UID = 65532
# Keys of a [token.NAME] table that hold a secret themselves.
SECRET_VALUE_KEYS = {"client_secret", "assertion", "password", "static_token", "refresh_token",
                     "client_assertion", "subject_token", "actor_token"}
# Keys naming a file that holds a secret (or a key, a certificate, a CA).
SECRET_FILE_KEYS = {"client_secret_file", "assertion_file", "refresh_token_file", "password_file", "token_file",
                    "jwt_signing_key_file", "tls_client_cert_file", "tls_client_key_file", "token_ca_file",
                    "client_assertion_file", "subject_token_file", "actor_token_file"}
# Of those, the ones that may also be the projected service-account token (workload identity).
SA_TOKEN_FILE_KEYS = {"client_assertion_file", "subject_token_file"}
# Keys of a [[route]] table naming a file of a Secret.
ROUTE_SECRET_FILE_KEYS = {"upstream_tls_client_cert_file", "upstream_tls_client_key_file"}
# Keys of [shared] naming a file of a Secret; the Redis CA may also be a file of a ConfigMap.
SHARED_SECRET_FILE_KEYS = {"redis_url_file", "shared_key_file", "redis_client_cert_file", "redis_client_key_file"}
SHARED_CA_KEY = "redis_ca_file"
HOST_PORT = re.compile(r"^([^\s@/:\[\]]+|\[[0-9a-fA-F:.]+\]):[0-9]{1,5}$")
PEM = "-----BEGIN"
ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy/monitoring/grafana-dashboard.json"
ALERTS = ROOT / "deploy/monitoring/alerts.yaml"
ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


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


def load_docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def pod_workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d.get("kind") in ("Deployment", "StatefulSet", "DaemonSet")]


def find_container(containers: list[dict] | None, name: str) -> dict | None:
    return next((c for c in containers or [] if c.get("name") == name), None)


def effective_security(pod: dict, c: dict) -> dict:
    """The container's security settings, falling back to the pod's where Kubernetes does."""
    pod_sc = pod.get("securityContext") or {}
    sc = c.get("securityContext") or {}
    eff = {k: pod_sc[k] for k in ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile") if k in pod_sc}
    eff.update(sc)
    return eff


def admin_port_ok(port, c: dict) -> bool:
    """Whether a probe or endpoint port names the sidecar's admin port (by name or number)."""
    for p in c.get("ports") or []:
        if p.get("containerPort") == ADMIN_PORT and port in (p.get("name"), ADMIN_PORT):
            return True
    return False


def http_probe(c: dict, kind: str) -> dict:
    return ((c.get(kind) or {}).get("httpGet")) or {}


def mounts_by_path(c: dict, pod: dict) -> dict[str, tuple[dict, dict]]:
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    return {m["mountPath"].rstrip("/"): (m, volumes.get(m["name"], {})) for m in c.get("volumeMounts") or []}


def mount_for(path: str, mounts: dict[str, tuple[dict, dict]]) -> tuple[str, dict, dict] | None:
    best = None
    for mp, (m, v) in mounts.items():
        if path.startswith(mp + "/") and (best is None or len(mp) > len(best[0])):
            best = (mp, m, v)
    return best


def env_refs(value) -> list[str]:
    """The ${VAR} names in the string values of a parsed config."""
    if isinstance(value, dict):
        return [r for v in value.values() for r in env_refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in env_refs(v)]
    if isinstance(value, str):
        return re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value)
    return []


def sa_token_sources(volume: dict) -> list[dict]:
    """The serviceAccountToken sources of a projected volume."""
    return [src["serviceAccountToken"] for src in (volume.get("projected") or {}).get("sources") or []
            if "serviceAccountToken" in src]


def strings(value) -> list[str]:
    """Every string in a parsed config."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def config_value(cfg: dict, dotted: str):
    """token.NAME.KEY or route.NAME.KEY of a parsed config, or None."""
    kind, name, key = dotted.split(".", 2)
    if kind == "token":
        return ((cfg.get("token") or {}).get(name) or {}).get(key)
    route = next((r for r in cfg.get("route") or [] if r.get("name") == name), {})
    return route.get(key)


def secret_values(doc: dict) -> dict[str, str]:
    out = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
    out.update({k: str(v) for k, v in (doc.get("stringData") or {}).items()})
    return out


def check_variant(ck: Checks, name: str, path: Path, exp: dict, fakes: dict, binary: str | None) -> None:
    docs = load_docs(path)
    raw = path.read_text()
    p = f"[{name}]"
    ck.check(f"{p} renders documents ({len(docs)})", len(docs) > 0)

    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d.get("kind", "?"), []).append(d)
    workloads = [w for w in pod_workloads(docs)
                 if find_container(w["spec"]["template"]["spec"].get("initContainers"), SIDECAR)
                 or find_container(w["spec"]["template"]["spec"].get("containers"), SIDECAR)]
    if not ck.check(f"{p} a workload runs the token-sidecar container", len(workloads) == 1,
                    f"found {len(workloads)}"):
        return
    w = workloads[0]
    pod = w["spec"]["template"]["spec"]
    pod_labels = w["spec"]["template"]["metadata"].get("labels") or {}
    c = find_container(pod.get("initContainers"), SIDECAR)

    # Native sidecar.
    ck.check(f"{p} sidecar is an init container with restartPolicy: Always",
             c is not None and c.get("restartPolicy") == "Always"
             and find_container(pod.get("containers"), SIDECAR) is None)
    if c is None:
        return
    app_containers = pod.get("containers") or []
    ck.check(f"{p} an app container runs beside the sidecar", len(app_containers) >= 1)

    # The published image, tagged with the release.
    app_version = yaml.safe_load((ROOT / "charts/token-sidecar/Chart.yaml").read_text())["appVersion"]
    want_image = f"{PUBLISHED_IMAGE}:{app_version}"
    ck.check(f"{p} sidecar image is {want_image} (the published image, the chart's appVersion)",
             c.get("image") == want_image, str(c.get("image")))

    # Admin port and probes.
    ck.check(f"{p} admin port {ADMIN_PORT} is a named container port (metrics/admin)",
             any(pp.get("containerPort") == ADMIN_PORT and pp.get("name") in ("metrics", "admin")
                 for pp in c.get("ports") or []))
    for kind, want in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        g = http_probe(c, kind)
        ck.check(f"{p} {kind} is GET {want} on the admin port",
                 g.get("path") == want and admin_port_ok(g.get("port"), c), json.dumps(g))

    # Security.
    for cont, label in [(c, "sidecar")] + [(a, f"container {a['name']}") for a in app_containers]:
        sc = effective_security(pod, cont)
        caps = sc.get("capabilities") or {}
        problems = []
        if sc.get("runAsNonRoot") is not True:
            problems.append("runAsNonRoot")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append("readOnlyRootFilesystem")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append("allowPrivilegeEscalation")
        if "ALL" not in (caps.get("drop") or []) or caps.get("add"):
            problems.append("capabilities drop ALL, add none")
        if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append("seccompProfile RuntimeDefault")
        if sc.get("privileged"):
            problems.append("privileged")
        if cont is c and sc.get("runAsUser") != UID:
            problems.append(f"runAsUser {UID}")
        user = f"non-root ({UID})" if cont is c else "non-root"
        ck.check(f"{p} {label}: {user}, read-only root, no privilege escalation, no capabilities, "
                 "seccomp RuntimeDefault",
                 not problems, "missing: " + ", ".join(problems))
    ck.check(f"{p} pod: no host namespaces, no service account token",
             not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
             and pod.get("automountServiceAccountToken") is False)

    # Resources.
    res = c.get("resources") or {}
    req, lim = res.get("requests") or {}, res.get("limits") or {}
    ck.check(f"{p} sidecar requests cpu+memory and limits cpu+memory",
             {"cpu", "memory"} <= set(req) and {"cpu", "memory"} <= set(lim), json.dumps(res))
    ck.check(f"{p} every container has requests and a memory limit",
             all((a.get("resources") or {}).get("requests") and "memory" in ((a.get("resources") or {}).get("limits") or {})
                 for a in app_containers))

    # The config: mounted from a ConfigMap of this rendering.
    args = c.get("args") or []
    mounts = mounts_by_path(c, pod)
    ck.check(f"{p} sidecar runs with --config {CONFIG_PATH}",
             any(args[i] == "--config" and args[i + 1] == CONFIG_PATH for i in range(len(args) - 1))
             or f"--config={CONFIG_PATH}" in args, json.dumps(args))
    found = mount_for(CONFIG_PATH, mounts)
    cm_name = (found[2].get("configMap") or {}).get("name") if found else None
    cm = next((d for d in by_kind.get("ConfigMap", []) if d["metadata"]["name"] == cm_name), None)
    if not ck.check(f"{p} config.toml comes from a rendered ConfigMap mounted read-only",
                    cm is not None and "config.toml" in (cm.get("data") or {}) and found[1].get("readOnly") is True,
                    f"configMap {cm_name!r}"):
        return
    text = cm["data"]["config.toml"]
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        ck.check(f"{p} config.toml is valid TOML", False, str(e))
        return
    ck.check(f"{p} config.toml is valid TOML", True)

    admin = (cfg.get("admin") or {}).get("listen", f"0.0.0.0:{ADMIN_PORT}")
    ck.check(f"{p} config: admin listens on 0.0.0.0:{ADMIN_PORT} (the probed port)", admin == f"0.0.0.0:{ADMIN_PORT}", admin)
    routes = cfg.get("route") or []
    ck.check(f"{p} config: every route listens on loopback only",
             bool(routes) and all(str(r.get("listen", "127.0.0.1:8080")).startswith(("127.", "[::1]")) for r in routes),
             json.dumps([r.get("listen") for r in routes]))

    env = {e["name"]: e for e in c.get("env") or []}
    secret_volumes = {mp: v for mp, (m, v) in mounts.items() if "secret" in v}
    tokens = cfg.get("token") or {}
    literal, bad_files, bad_vars, bad_state = [], [], [], []
    for tname, t in tokens.items():
        for k, v in t.items():
            where = f"token.{tname}.{k}"
            if k in SECRET_VALUE_KEYS and not ENV_REF.match(str(v)):
                literal.append(where)
            if k in SECRET_FILE_KEYS:
                m = mount_for(str(v), mounts)
                from_secret = m is not None and "secret" in m[2]
                # The workload identity token: a projected volume of service-account tokens only.
                from_sa_token = (m is not None and k in SA_TOKEN_FILE_KEYS and sa_token_sources(m[2])
                                 and len(sa_token_sources(m[2])) == len(m[2]["projected"]["sources"]))
                if not (from_secret or from_sa_token) or m[1].get("readOnly") is not True:
                    bad_files.append(f"{where}={v}")
            if k == "state_file":
                m = mount_for(str(v), mounts)
                # In a directory of its own under the emptyDir (which every user can write):
                # the sidecar creates it with mode 0700, and refuses an emptyDir's root.
                in_subdir = m is not None and Path(str(v)).parent != Path(m[0])
                if m is None or "emptyDir" not in m[2] or m[1].get("readOnly") or not in_subdir:
                    bad_state.append(f"{where}={v}")
    for r in routes:
        for k in ROUTE_SECRET_FILE_KEYS & set(r):
            m = mount_for(str(r[k]), mounts)
            if m is None or "secret" not in m[2] or m[1].get("readOnly") is not True:
                bad_files.append(f"route.{r.get('name')}.{k}={r[k]}")
    literal += [f"a PEM block ({s.splitlines()[0][:40]}...)" for s in strings(cfg) if PEM in s]
    missing = [k for k in exp.get("secret_files") or [] if config_value(cfg, k) is None]
    if exp.get("secret_files"):
        ck.check(f"{p} config: the keys and certificates are there ({len(exp['secret_files'])} files)",
                 not missing, "missing: " + ", ".join(missing))
    shared = cfg.get("shared") or {}
    redis_url = shared.get("redis_url")
    for k in sorted(SHARED_SECRET_FILE_KEYS | {SHARED_CA_KEY}):
        if k in shared:
            m = mount_for(str(shared[k]), mounts)
            kinds = ("secret", "configMap") if k == SHARED_CA_KEY else ("secret",)
            if m is None or not any(kind in m[2] for kind in kinds) or m[1].get("readOnly") is not True:
                bad_files.append(f"shared.{k}={shared[k]}")
    if redis_url is not None and not ENV_REF.match(redis_url) and "@" in redis_url:
        literal.append("shared.redis_url (credentials)")
    ck.check(f"{p} config: no secret value and no PEM, only *_file paths and ${{VAR}}", not literal, ", ".join(literal))
    ck.check(f"{p} config: every secret file is in a Secret volume (a client assertion or subject token: in the "
             "projected service-account token volume) mounted read-only", not bad_files, ", ".join(bad_files))
    ck.check(f"{p} config: state files are on a writable emptyDir (the root filesystem is read-only), "
             "in a subdirectory the sidecar creates",
             not bad_state, ", ".join(bad_state))

    # ${VAR}: defined in the sidecar's environment; secrets ones from a Secret.
    refs = set(env_refs(cfg))
    for var in sorted(refs):
        e = env.get(var)
        from_secret = bool(e and ((e.get("valueFrom") or {}).get("secretKeyRef")))
        if not from_secret:
            bad_vars.append(var)
    ck.check(f"{p} config: every ${{VAR}} is set from a Secret (secretKeyRef) in the sidecar's env",
             not bad_vars, "not from a Secret: " + ", ".join(bad_vars))

    # Secret files readable by uid/gid 65532.
    unreadable = []
    for mp, v in secret_volumes.items():
        mode = v["secret"].get("defaultMode", 0o644)
        if not (mode & 0o004 or (mode & 0o040 and (pod.get("securityContext") or {}).get("fsGroup") is not None)):
            unreadable.append(f"{mp} mode {oct(mode)}")
    ck.check(f"{p} the mounted Secret is readable by the sidecar (mode/fsGroup) and not writable",
             not unreadable and all(not (v["secret"].get("defaultMode", 0o644) & 0o222) for v in secret_volumes.values()),
             ", ".join(unreadable))

    # Workload identity: a projected service-account token, in the sidecar only.
    check_workload_identity(ck, p, exp.get("workload_identity"), pod, c, cfg, by_kind, secret_volumes, env)

    # Secrets (and the Redis CA) reach the sidecar only.
    others = [(x["name"], m["name"]) for k in ("initContainers", "containers", "ephemeralContainers")
              for x in pod.get(k) or [] if x is not c for m in x.get("volumeMounts") or []
              if m["name"] in {v["name"] for v in pod.get("volumes") or [] if "secret" in v}
              or m["name"] == "token-sidecar-redis-ca"]
    ck.check(f"{p} the Secret volumes are mounted into the sidecar container only", not others,
             ", ".join(f"{x} mounts {v}" for x, v in others))

    # Redis mode.
    if exp["redis"]:
        check_redis(ck, p, exp["redis"] if isinstance(exp["redis"], dict) else {}, shared, mounts, docs,
                    by_kind, text, fakes)
        ref = ENV_REF.match(redis_url or "")
        ck.check(f"{p} redis: [shared] redis_url_file from the Secret, or a redis_url without credentials",
                 "redis_url_file" in shared
                 or (redis_url is not None and (ref.group(1) not in bad_vars if ref else "@" not in redis_url)),
                 str(redis_url or shared.get("redis_url_file")))
        ck.check(f"{p} redis: the entries are sealed with a key from the Secret (shared_key_file)",
                 "shared_key_file" in shared, json.dumps(sorted(shared)))
        ck.check(f"{p} redis: more than one replica", (w["spec"].get("replicas") or 1) > 1)
    else:
        ck.check(f"{p} no shared store configured", "shared" not in cfg)

    # Secrets.
    secrets = by_kind.get("Secret", [])
    fake_values = [v for v in fakes.values()]
    if exp["secrets"] == "placeholders":
        bad = [f"{s['metadata']['name']}/{k}" for s in secrets for k, v in secret_values(s).items() if "PLACEHOLDER" not in v]
        ck.check(f"{p} the example Secret holds PLACEHOLDER values only", bool(secrets) and not bad, ", ".join(bad))
    elif exp["secrets"] == "none":
        ck.check(f"{p} no Secret is rendered", not secrets, ", ".join(s["metadata"]["name"] for s in secrets))
    elif exp["secrets"] == "fake":
        vals = [v for s in secrets for v in secret_values(s).values()]
        ck.check(f"{p} the user's Secret holds the user's values", bool(secrets) and all("PLACEHOLDER" not in v for v in vals)
                 and any(f in vals for f in fake_values))
    # No secret value anywhere but in a Secret: raw, base64, or inside a URL.
    outside = yaml.safe_dump_all([d for d in docs if d.get("kind") != "Secret"])
    leaks = []
    for key, v in fakes.items():
        for form in (v, base64.b64encode(v.encode()).decode()):
            if form in outside:
                leaks.append(key)
    leaks += [k for k, v in fakes.items() if exp["secrets"] != "fake" and v in raw]
    ck.check(f"{p} no secret value appears outside a Secret (raw or base64)", not leaks, ", ".join(sorted(set(leaks))))

    # Service + ServiceMonitor.
    sms = by_kind.get("ServiceMonitor", [])
    if exp["service_monitor"]:
        ok = len(sms) == 1
        detail = f"{len(sms)} ServiceMonitor(s)"
        if ok:
            sm = sms[0]
            ep = (sm["spec"].get("endpoints") or [{}])[0]
            sel = (sm["spec"].get("selector") or {}).get("matchLabels") or {}
            svcs = [s for s in by_kind.get("Service", [])
                    if sel and all((s["metadata"].get("labels") or {}).get(k) == v for k, v in sel.items())]
            svc_ok = any(
                all(pod_labels.get(k) == v for k, v in (s["spec"].get("selector") or {}).items())
                and any(pp.get("name") == ep.get("port") and pp.get("targetPort") in ("metrics", "admin", ADMIN_PORT)
                        for pp in s["spec"].get("ports") or [])
                for s in svcs)
            ok = (sm.get("apiVersion") == "monitoring.coreos.com/v1" and ep.get("path", "/metrics") == "/metrics"
                  and ep.get("port") in ("metrics", "admin") and svc_ok)
            detail = f"endpoint {ep}, services {[s['metadata']['name'] for s in svcs]}"
        ck.check(f"{p} ServiceMonitor scrapes /metrics on the admin port through a Service selecting the pods", ok, detail)
    else:
        ck.check(f"{p} no ServiceMonitor (not enabled)", not sms)

    # NetworkPolicy.
    nps = by_kind.get("NetworkPolicy", [])
    if exp["network_policy"]:
        ok, detail = False, f"{len(nps)} NetworkPolicy(ies)"
        if len(nps) == 1:
            spec = nps[0]["spec"]
            selects = all(pod_labels.get(k) == v for k, v in ((spec.get("podSelector") or {}).get("matchLabels") or {}).items())
            in_ports = [pp.get("port") for r in spec.get("ingress") or [] for pp in r.get("ports") or []]
            out_ports = {pp.get("port") for r in spec.get("egress") or [] for pp in r.get("ports") or []}
            ingress_ok = bool(in_ports) and all(admin_port_ok(pp, c) for pp in in_ports) and all(
                r.get("from") for r in spec.get("ingress") or [])
            redis_ports = redis_expectation(exp).get("ports", {6379}) if exp["redis"] else set()
            want = {53, 443} | redis_ports
            ok = (selects and set(spec.get("policyTypes") or []) == {"Ingress", "Egress"} and ingress_ok
                  and want <= out_ports and (exp["redis"] or not {6379, 26379} & out_ports))
            detail = f"ingress ports {in_ports}, egress ports {sorted(map(str, out_ports))}"
        ck.check(f"{p} NetworkPolicy: ingress to the admin port only, egress DNS + 443"
                 + (f" + Redis {sorted(redis_expectation(exp).get('ports', {6379}))}" if exp["redis"] else ""),
                 ok, detail)
    else:
        ck.check(f"{p} no NetworkPolicy (not enabled)", not nps)

    check_monitoring(ck, p, exp, by_kind)

    # The real binary accepts the rendered config.
    if binary:
        check_with_binary(ck, p, text, tokens, mounts, env, secrets, fakes, binary, by_kind.get("ConfigMap", []))


def redis_expectation(exp: dict) -> dict:
    return exp["redis"] if isinstance(exp.get("redis"), dict) else {}


def check_redis(ck: Checks, p: str, want: dict, shared: dict, mounts: dict, docs: list[dict],
                by_kind: dict, text: str, fakes: dict) -> None:
    """The [shared] table of a variant with Redis: its topology, TLS material as files of
    read-only Secret (or, the CA, ConfigMap) volumes, and nothing secret in the ConfigMap."""
    topology = want.get("topology", "single")
    sentinels, master, nodes = shared.get("redis_sentinels"), shared.get("redis_sentinel_master"), \
        shared.get("redis_cluster_nodes")
    listed = {"sentinel": sentinels, "cluster": nodes}.get(topology)
    problems = []
    if topology == "single" and (sentinels or master or nodes):
        problems.append("sentinel or cluster keys on a one-server variant")
    if topology == "sentinel" and (nodes or master != want.get("master")):
        problems.append(f"redis_sentinel_master {master!r}, redis_cluster_nodes {nodes!r}")
    if topology == "cluster" and (sentinels or master):
        problems.append("sentinel keys on a cluster variant")
    if topology != "single":
        if not isinstance(listed, list) or len(listed) != want.get("nodes"):
            problems.append(f"{len(listed) if isinstance(listed, list) else 0} nodes, want {want.get('nodes')}")
        else:
            problems += [f"{n!r} is not HOST:PORT" for n in listed if not HOST_PORT.match(str(n))]
    ck.check(f"{p} redis: topology {topology}"
             + {"single": " (no sentinels, no cluster nodes)",
                "sentinel": f" ({want.get('nodes')} redis_sentinels, HOST:PORT; redis_sentinel_master {want.get('master')})",
                "cluster": f" ({want.get('nodes')} redis_cluster_nodes, HOST:PORT)"}[topology],
             not problems, "; ".join(problems))
    if "key_prefix" in want:
        ck.check(f"{p} redis: key_prefix {want['key_prefix']}", shared.get("key_prefix") == want["key_prefix"],
                 repr(shared.get("key_prefix")))

    tls = want.get("tls")
    if tls is None:
        ck.check(f"{p} redis: no CA and no client certificate (not asked for)",
                 not {SHARED_CA_KEY, "redis_client_cert_file", "redis_client_key_file"} & set(shared),
                 json.dumps(sorted(shared)))
    else:
        # The scheme: rediss://, in the config or in a rendered Secret holding the URL file.
        url = shared.get("redis_url")
        if url is None and "redis_url_file" in shared:
            key = Path(str(shared["redis_url_file"])).name
            url = next((secret_values(d).get(key) for d in by_kind.get("Secret", []) if key in secret_values(d)),
                       fakes.get(key))
        ck.check(f"{p} redis: TLS, the URL is rediss://", str(url or "").startswith("rediss://"),
                 "scheme " + str(url or "").split("://")[0])
        kind, name = tls["ca"]
        ca = shared.get(SHARED_CA_KEY)
        m = mount_for(str(ca), mounts) if ca else None
        vol = m[2] if m else {}
        source = vol.get(kind) or {}
        got_name = source.get("secretName") if kind == "secret" else source.get("name")
        items = source.get("items") or []
        # A Secret or ConfigMap holding the CA for the sidecar only: that key alone is projected.
        only_ca = not tls.get("ca_only") or (len(items) == 1 and items[0].get("path") == Path(str(ca)).name)
        ck.check(f"{p} redis: redis_ca_file is a file of the {kind} {name}, mounted read-only"
                 + (", its CA key only" if tls.get("ca_only") else ""),
                 m is not None and got_name == name and m[1].get("readOnly") is True and only_ca,
                 f"{ca!r} in volume {json.dumps(vol)}")
        cert, key = shared.get("redis_client_cert_file"), shared.get("redis_client_key_file")
        if tls.get("client_cert"):
            ms = [mount_for(str(f), mounts) if f else None for f in (cert, key)]
            ck.check(f"{p} redis: a client certificate and its key, files of a Secret mounted read-only",
                     all(x is not None and "secret" in x[2] and x[1].get("readOnly") is True for x in ms),
                     f"{cert!r}, {key!r}")
        else:
            ck.check(f"{p} redis: no client certificate (not asked for)", cert is None and key is None)

    # The config itself holds no credential: no user:password@ in a URL, no fake secret, no PEM.
    leaked = [k for k, v in fakes.items() if v in text]
    at = [k for k, v in shared.items() if isinstance(v, str) and "@" in v] + [
        k for k, v in shared.items() if isinstance(v, list) and any("@" in str(x) for x in v)]
    ck.check(f"{p} redis: the ConfigMap's config holds no secret (no credentials in a URL or node, no key, no PEM)",
             not leaked and not at and PEM not in text, ", ".join(leaked + at))


def check_monitoring(ck: Checks, p: str, exp: dict, by_kind: dict) -> None:
    """The Grafana dashboard ConfigMap and the PrometheusRule, when the variant enables them."""
    dashboards = [d for d in by_kind.get("ConfigMap", []) if "token-sidecar.json" in (d.get("data") or {})]
    want = exp.get("grafana_dashboard")
    if not want:
        ck.check(f"{p} no Grafana dashboard ConfigMap (not enabled)", not dashboards)
    elif ck.check(f"{p} one Grafana dashboard ConfigMap", len(dashboards) == 1, f"{len(dashboards)}"):
        md = dashboards[0]["metadata"]
        ck.check(f"{p} dashboard ConfigMap: deploy/monitoring/grafana-dashboard.json as it is, labelled "
                 f"grafana_dashboard: \"1\", in namespace {want['namespace']}",
                 dashboards[0]["data"]["token-sidecar.json"] == DASHBOARD.read_text()
                 and (md.get("labels") or {}).get("grafana_dashboard") == "1"
                 and md.get("namespace") == want["namespace"]
                 and all((md.get("annotations") or {}).get(k) == v for k, v in (want.get("annotations") or {}).items()),
                 f"labels {md.get('labels')}, namespace {md.get('namespace')}, annotations {md.get('annotations')}")

    rules = by_kind.get("PrometheusRule", [])
    want = exp.get("prometheus_rule")
    if not want:
        ck.check(f"{p} no PrometheusRule (not enabled)", not rules)
        return
    if not ck.check(f"{p} one PrometheusRule", len(rules) == 1, f"{len(rules)}"):
        return
    pr = rules[0]
    md = pr["metadata"]
    ck.check(f"{p} PrometheusRule: monitoring.coreos.com/v1, namespace {want['namespace']}, labels {want['labels']}",
             pr.get("apiVersion") == "monitoring.coreos.com/v1" and md.get("namespace") == want["namespace"]
             and all((md.get("labels") or {}).get(k) == v for k, v in want["labels"].items()),
             f"{pr.get('apiVersion')}, {md.get('namespace')}, {md.get('labels')}")
    groups = (pr.get("spec") or {}).get("groups") or []
    alerts = {r.get("alert"): r for g in groups for r in g.get("rules") or []}
    problems = []
    for name, r in alerts.items():
        ann = r.get("annotations") or {}
        if not (r.get("labels") or {}).get("severity") or not ann.get("summary") or not ann.get("description"):
            problems.append(f"{name}: severity, summary or description missing")
        rb = runbook_problem(ann.get("runbook"))
        if rb:
            problems.append(f"{name}: {rb}")
        base = want.get("runbook_base")
        if base and ann.get("runbook_url") != f"{base}/{ann.get('runbook')}":
            problems.append(f"{name}: runbook_url {ann.get('runbook_url')!r}")
        if not base and "runbook_url" in ann:
            problems.append(f"{name}: a runbook_url without runbookBaseUrl")
    ck.check(f"{p} PrometheusRule: {len(alerts)} alerts, each with a severity, a summary, a description and a "
             "runbook that exists" + (" (and its runbook_url)" if want.get("runbook_base") else ""),
             bool(alerts) and not problems, "; ".join(problems))
    if want.get("defaults"):
        plain = yaml.safe_load(ALERTS.read_text())["groups"]
        ck.check(f"{p} PrometheusRule with the chart's defaults: exactly the rules of deploy/monitoring/alerts.yaml",
                 groups == plain, "differ: " + ", ".join(
                     sorted(n for n in set(alerts) | {r["alert"] for g in plain for r in g["rules"]}
                            if alerts.get(n) != next((r for g in plain for r in g["rules"] if r["alert"] == n), None))))
        return
    plain_names = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    absent = set(want.get("absent") or [])
    ck.check(f"{p} PrometheusRule: every alert of deploy/monitoring/alerts.yaml but those switched off "
             f"({', '.join(sorted(absent))})", set(alerts) == plain_names - absent,
             f"missing {sorted(plain_names - absent - set(alerts))}, unexpected {sorted(set(alerts) - (plain_names - absent))}")
    bad = [f"{n}: expr without {s!r}" for n, s in (want.get("exprs") or {}).items()
           if s not in (alerts.get(n) or {}).get("expr", "")]
    bad += [f"{n}: for {(alerts.get(n) or {}).get('for')!r}" for n, f in (want.get("fors") or {}).items()
            if (alerts.get(n) or {}).get("for") != f]
    bad += [f"{n}: severity {((alerts.get(n) or {}).get('labels') or {}).get('severity')!r}"
            for n, sev in (want.get("severities") or {}).items()
            if ((alerts.get(n) or {}).get("labels") or {}).get("severity") != sev]
    ck.check(f"{p} PrometheusRule: the thresholds, durations and severities of the values", not bad, "; ".join(bad))


def check_workload_identity(ck: Checks, p: str, wi: dict | None, pod: dict, c: dict, cfg: dict,
                            by_kind: dict, secret_volumes: dict, env: dict) -> None:
    sa_volumes = {v["name"]: v for v in pod.get("volumes") or [] if sa_token_sources(v)}
    every = [(k, x) for k in ("initContainers", "containers", "ephemeralContainers") for x in pod.get(k) or []]
    users = {name: [x["name"] for _, x in every if any(m.get("name") == name for m in x.get("volumeMounts") or [])]
             for name in sa_volumes}
    if not wi:
        ck.check(f"{p} no service-account token is projected into the pod", not sa_volumes, ", ".join(sa_volumes))
        return
    if not ck.check(f"{p} workload identity: one projected volume holding one service-account token",
                    len(sa_volumes) == 1 and all(len(sa_token_sources(v)) == 1 == len(v["projected"]["sources"])
                                                 for v in sa_volumes.values()),
                    json.dumps(list(sa_volumes.values()))):
        return
    name, vol = next(iter(sa_volumes.items()))
    src = sa_token_sources(vol)[0]
    ck.check(f"{p} workload identity: audience {wi['audience']}, expirationSeconds {wi['expiration']} (>= 600)",
             src.get("audience") == wi["audience"] and src.get("expirationSeconds") == wi["expiration"] >= 600,
             json.dumps(src))
    mount = next((m for m in c.get("volumeMounts") or [] if m.get("name") == name), None)
    ck.check(f"{p} workload identity: the token is mounted into the sidecar only, read-only",
             users[name] == [SIDECAR] and mount is not None and mount.get("readOnly") is True
             and not mount.get("subPath"),
             f"mounted in {users[name]}, mount {mount}")
    path = f"{mount['mountPath'].rstrip('/')}/{src.get('path')}" if mount else None
    wrong = []
    for tname, use in wi["use"].items():
        t = (cfg.get("token") or {}).get(tname) or {}
        if use == "assertion":
            ok = t.get("client_auth") == "assertion_file" and t.get("client_assertion_file") == path
        else:
            ok = t.get("grant") == "token_exchange" and t.get("subject_token_file") == path
        if not ok:
            wrong.append(f"token.{tname}")
    ck.check(f"{p} workload identity: " + ", ".join(f"token.{n} uses it as the {u} token" for n, u in wi["use"].items())
             + f" ({path})", not wrong, "not: " + ", ".join(wrong))
    sa = wi["service_account"]
    sa_doc = next((d for d in by_kind.get("ServiceAccount", []) if d["metadata"]["name"] == sa), None)
    ck.check(f"{p} workload identity: the pods run as the ServiceAccount {sa}, which automounts no token",
             pod.get("serviceAccountName") == sa and sa_doc is not None
             and sa_doc.get("automountServiceAccountToken") is False,
             f"serviceAccountName {pod.get('serviceAccountName')!r}, ServiceAccount {sa_doc}")
    from_secret = [n for n, e in env.items() if (e.get("valueFrom") or {}).get("secretKeyRef")]
    ck.check(f"{p} workload identity: no Secret at all (no Secret volume, no variable from a Secret)",
             not secret_volumes and not from_secret, f"volumes {sorted(secret_volumes)}, variables {from_secret}")


def check_with_binary(ck: Checks, p: str, text: str, tokens: dict, mounts: dict, env: dict,
                      secrets: list[dict], fakes: dict, binary: str, configmaps: list[dict]) -> None:
    """`token-sidecar check` on the config, with the mounted paths moved into a temporary dir
    holding stand-in files, and the ${VAR}s set from stand-in Secret values."""
    provided = {}
    for s in secrets:
        # An example Secret's placeholders stand for what a user writes there: the fakes.
        provided.update({k: v for k, v in secret_values(s).items() if "PLACEHOLDER" not in v})
    # The user's Secret is not part of a chart's rendering: use the documented keys' fakes.
    for k, v in fakes.items():
        provided.setdefault(k, v)
    with tempfile.TemporaryDirectory(prefix="token-sidecar-check-") as tmp:
        cfg = text
        for mp, (m, v) in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            local = Path(tmp) / mp.strip("/")
            local.mkdir(parents=True, exist_ok=True)
            if "secret" in v:
                # The keys named by `items` at their paths, else every key.
                items = v["secret"].get("items") or [{"key": k, "path": k} for k in provided]
                for it in items:
                    if it["key"] in provided:
                        f = local / it["path"]
                        f.write_text(provided[it["key"]])
                        f.chmod(0o400)
            elif "configMap" in v and not mp.rstrip("/").endswith(CONFIG_PATH.rsplit("/", 1)[0]):
                # Another ConfigMap (the Redis CA): rendered here, or the user's (fakes stand in).
                cm_doc = next((d for d in configmaps if d["metadata"]["name"] == v["configMap"].get("name")), None)
                data = {k: val for k, val in ((cm_doc or {}).get("data") or {}).items() if "PLACEHOLDER" not in val}
                items = v["configMap"].get("items") or [{"key": k, "path": k} for k in data]
                for it in items:
                    val = data.get(it["key"], fakes.get(it["key"]))
                    if val is not None:
                        (local / it["path"]).write_text(val)
            # The kubelet's service-account token: a stand-in JWT.
            for src in sa_token_sources(v):
                f = local / src["path"]
                f.write_text(fakes["sa-token"])
                f.chmod(0o400)
            cfg = cfg.replace(f'"{mp}/', f'"{local}/')
        conf = Path(tmp) / "config.toml"
        conf.write_text(cfg)
        run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for name, e in env.items():
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                run_env[name] = provided.get(ref["key"], "")
            elif "value" in e:
                run_env[name] = str(e["value"])
        r = subprocess.run([binary, "check", "--config", str(conf)], env=run_env,
                           capture_output=True, text=True, timeout=60)
        out = r.stdout + r.stderr
        ck.check(f"{p} `token-sidecar check` accepts the rendered config.toml", r.returncode == 0,
                 out.strip().replace("\n", " | "))
        # `check` prints client ids (not secrets); nothing else may show.
        leaked = [k for k, v in fakes.items() if not k.endswith("client-id") and v in out]
        ck.check(f"{p} `token-sidecar check` prints no secret", not leaked, ", ".join(leaked))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("render_dir", type=Path)
    ap.add_argument("--binary", help="a token-sidecar binary: validate each config.toml with `check`")
    a = ap.parse_args()
    ck = Checks()
    fakes = json.loads((a.render_dir / "fakes.json").read_text())

    rendered = {f.stem for f in (a.render_dir / "variants").glob("*.yaml")}
    ck.check("every expected variant was rendered", rendered == set(VARIANTS),
             f"missing {sorted(set(VARIANTS) - rendered)}, unexpected {sorted(rendered - set(VARIANTS))}")
    for name, exp in VARIANTS.items():
        path = a.render_dir / "variants" / f"{name}.yaml"
        if path.exists():
            check_variant(ck, name, path, exp, fakes, a.binary)

    for name, what in NEGATIVE.items():
        rc_file = a.render_dir / "negative" / f"{name}.rc"
        out_file = a.render_dir / "negative" / f"{name}.out"
        if not ck.check(f"[{name}] was attempted", rc_file.exists() and out_file.exists()):
            continue
        rc = int(rc_file.read_text().strip() or "0")
        out = out_file.read_text()
        err_file = a.render_dir / "negative" / f"{name}.err"
        err = err_file.read_text() if err_file.exists() else ""
        ck.check(f"[{name}] the chart refuses {what}", rc != 0 and "kind:" not in out, f"exit {rc}")
        ck.check(f"[{name}] no secret value in its output or error", not any(v in out + err for v in fakes.values()),
                 err.strip().replace("\n", " | "))

    print(f"{ck.passed} passed, {ck.failed} failed")
    return 1 if ck.failed else 0


if __name__ == "__main__":
    sys.exit(main())
