#!/usr/bin/env python3
"""Side-by-side benchmark: token-sidecar vs nginx vs HAProxy, each with ONE worker.

    python3 bench/run.py                      # defaults: every variant, 5 rounds of 6 s
    python3 bench/run.py --quick              # smoke test, well under 2 minutes
    python3 bench/run.py --variants get,h2 --rounds 5 --duration 15

Starts a fixed upstream (nginx, one worker, answering a small 200 that echoes the
Authorization header; HTTP and HTTPS with a CA made at run time), then the three proxies doing
the same job (inject `Authorization: Bearer abc`, forward with upstream keep-alive). It checks
that each one injects the header, then measures them interleaved (A B C A B C ...) after a
warm-up, with wrk (HTTP/1.1) and h2load (h2c from the app). Per run it records req/s, latency
p50/p99/p99.9, the proxy's CPU time per request (utime+stime of the proxy's processes, and the
two apart) and its peak RSS (VmRSS sampled every 100 ms). Prints a table per variant with the
ratios, and a verdict per variant and proxy: token-sidecar ahead, behind or level, from the 95 %
confidence interval of the req/s ratios of paired rounds. Writes bench/results/latest.json and
latest.md. Method and results: docs/benchmarks.md.

get-rl-local and get-rl-shared measure a rate decision per request (one [[route.limit]] rule that
never binds; shared: through a redis-server started for the variant), which nginx and HAProxy do
not make: there token-sidecar is measured against the same build without the rule
(SIDECAR_GET), and the baseline build, if any, with the rule.

The token-sidecar binary is $SIDECAR_BIN, or else `cargo build --release` is run and
target/release/token-sidecar used. Missing tools are installed with apt-get (root or sudo).
Python standard library only; Linux only (/proc).
"""

import argparse
import hashlib
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONF = HERE / "conf"
LUA = HERE / "report.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")

SIDECAR, NGINX, HAPROXY, DIRECT = "token-sidecar", "nginx", "haproxy", "upstream-direct"
# Another build of token-sidecar ($BASELINE_BIN, e.g. the one before a change), measured like the
# others in interleaved rounds: its paired verdict is the change's cost or gain.
BASELINE = "baseline"
PROXIES = [SIDECAR, HAPROXY, NGINX, BASELINE]
DEFAULT_PROXIES = [SIDECAR, HAPROXY, NGINX]
# The build under test with the `get` variant's configuration: the reference of the variants
# that measure a feature nginx and HAProxy do not have (`reference="get"`). Not selectable
# with --proxies: it runs whenever token-sidecar does in such a variant. Its ratio with
# token-sidecar is named after the variant it stands for ("sidecar/get").
SIDECAR_GET = "token-sidecar-get"
REFERENCE_NAMES = {SIDECAR_GET: "get"}

# The rate-decision variants: one [[route.limit]] rule over every path, at a rate the load never
# reaches (100,000 requests in any second, paced over 1.1 s: it binds above about 91,000 req/s),
# so that every request takes a decision and none waits or is refused.
RL_GROUP = "bench"
RL_MATCH = ["/**"]
RL_RATE = "100000/1s"
RL_LABELS = {SIDECAR: "token-sidecar (rate decision)", SIDECAR_GET: "token-sidecar (no rule)",
             BASELINE: "baseline (rate decision)"}

# tool -> Debian package
TOOLS = {
    "wrk": "wrk",
    "nginx": "nginx-light",
    "haproxy": "haproxy",
    "h2load": "nghttp2-client",
    "openssl": "openssl",
    "curl": "curl",
}
# needed only by the variants that name them
VARIANT_TOOLS = {"redis-server": "redis-server"}

VARIANTS = {
    "get": dict(desc="keep-alive GET, small response (wrk -t2 -c64)",
                tool="wrk", threads=2, conns=64, body=0, path="/", direct_baseline=True),
    "get-rl-local": dict(desc=f"keep-alive GET as in `get`, each request through a local rate "
                              f"decision (one [[route.limit]] rule, rate {RL_RATE}, never reached; "
                              f"wrk -t2 -c64), against the same build without the rule",
                         tool="wrk", threads=2, conns=64, body=0, path="/", rate_limit="local",
                         proxies=[SIDECAR, BASELINE], reference="get", labels=RL_LABELS,
                         strict=True),
    "get-rl-shared": dict(desc=f"keep-alive GET as in `get`, each request's rate decision taken in "
                               f"Redis (the same rule, --redis-url; one round trip per request; "
                               f"wrk -t2 -c64), against the same build without the rule",
                          tool="wrk", threads=2, conns=64, body=0, path="/", rate_limit="shared",
                          proxies=[SIDECAR, BASELINE], reference="get", labels=RL_LABELS,
                          strict=True, tools=["redis-server"]),
    "c1": dict(desc="one request at a time on one keep-alive connection (wrk -t1 -c1): the "
                    "latency a proxy adds when the machine is not saturated",
               tool="wrk", threads=1, conns=1, body=0, path="/", direct_baseline=True),
    "post-1k": dict(desc="keep-alive POST, 1 KiB body (wrk -t2 -c64)",
                    tool="wrk", threads=2, conns=64, body=1024, path="/post"),
    "post-1m": dict(desc="keep-alive POST, 1 MiB body (wrk -t2 -c8)",
                    tool="wrk", threads=2, conns=8, body=1 << 20, path="/post"),
    "c1000": dict(desc="keep-alive GET, 1,000 concurrent connections (wrk -t2 -c1000)",
                  tool="wrk", threads=2, conns=1000, body=0, path="/"),
    "https-upstream": dict(desc="keep-alive GET, proxy -> upstream over verified TLS (wrk -t2 -c64)",
                           tool="wrk", threads=2, conns=64, body=0, path="/", tls_upstream=True),
    "h2": dict(desc="h2c (prior knowledge) from the app, GET (h2load -t2 -c64 -m10)",
               tool="h2load", threads=2, conns=64, streams=10, path="/", h2=True),
    "rotate": dict(desc="keep-alive GET while the token file is replaced every second "
                        "(token-sidecar --grant file; wrk -t2 -c64)",
                   tool="wrk", threads=2, conns=64, body=0, path="/rotate", rotate=True,
                   proxies=[SIDECAR]),
}

# --------------------------------------------------------------------------------------------
# child processes: every one is registered so that it is stopped on any exit path

_children = []          # Popen objects still possibly running
_children_lock = threading.Lock()


def log(msg=""):
    print(msg, flush=True)


def die(msg):
    raise BenchError(msg)


class BenchError(Exception):
    pass


def _register(p):
    with _children_lock:
        _children.append(p)


def _unregister(p):
    with _children_lock:
        if p in _children:
            _children.remove(p)


def stop_process(p, grace=5.0):
    """SIGTERM the process we started (by PID), then SIGKILL its process group if needed."""
    if p.poll() is None:
        try:
            p.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    # Servers run in their own session (pgid == pid): take down any worker left behind.
    if getattr(p, "_own_group", False):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if p.poll() is None:
        try:
            p.kill()
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    _unregister(p)


def stop_all():
    with _children_lock:
        procs = list(reversed(_children))
    for p in procs:
        stop_process(p, grace=3.0)


def run_cmd(argv, timeout, env=None, check=True, cwd=None):
    """Runs a short-lived command, time-boxed; returns (rc, stdout, stderr)."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                         cwd=cwd, text=True, errors="replace")
    _register(p)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(p, grace=1.0)
        out, err = p.communicate()
        raise BenchError(f"timed out after {timeout:.0f}s: {' '.join(map(str, argv))}\n{err[-2000:]}")
    except BaseException:      # Ctrl-C, SIGTERM: do not leave the load generator running
        stop_process(p, grace=1.0)
        raise
    finally:
        _unregister(p)
    if check and p.returncode != 0:
        raise BenchError(f"exit {p.returncode}: {' '.join(map(str, argv))}\n{(out + err)[-3000:]}")
    return p.returncode, out, err


class Server:
    """A long-running server started in the foreground as our child, logging to a file."""

    def __init__(self, name, argv, logfile, env=None):
        self.name, self.argv, self.logfile = name, argv, logfile
        self._log = open(logfile, "ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.proc._own_group = True
        _register(self.proc)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def log_tail(self, n=3000):
        try:
            return Path(self.logfile).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def pids(self):
        """This process and its descendants (nginx: master + worker)."""
        return [self.pid] + descendants(self.pid)

    def stop(self):
        stop_process(self.proc)
        self._log.close()


def descendants(pid):
    parent = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        parent.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in parent.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cpu_split(pids):
    """User and kernel CPU ticks of `pids` (utime, stime: fields 14 and 15 of /proc/PID/stat)."""
    user = system = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2:].split()
        user += int(f[11])
        system += int(f[12])
    return user, system


def cpu_ticks(pids):
    return sum(cpu_split(pids))


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total


class RssSampler(threading.Thread):
    def __init__(self, pids, interval=0.1):
        super().__init__(daemon=True)
        self.pids, self.interval = pids, interval
        self.peak = rss_kib(pids)
        self._stop_evt = threading.Event()

    def run(self):
        while not self._stop_evt.wait(self.interval):
            self.peak = max(self.peak, rss_kib(self.pids))

    def stop(self):
        self._stop_evt.set()
        self.join(timeout=2)
        self.peak = max(self.peak, rss_kib(self.pids))
        return self.peak


# --------------------------------------------------------------------------------------------
# setup helpers

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, server, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            die(f"{server.name} exited with {server.proc.returncode} before listening on "
                f"{port}:\n{server.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    die(f"{server.name} is not listening on {port} after {timeout:.0f}s:\n{server.log_tail()}")


def http(method, url, body=None, timeout=5.0, ctx=None):
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def sudo_prefix():
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo"):
        return ["sudo", "-n"]
    return None


def required_tools(variant_names, variants=VARIANTS):
    """The tools a run of `variant_names` needs, each with its Debian package: every one of
    TOOLS, and those the variants name (`tools`: redis-server for `get-rl-shared`)."""
    tools = dict(TOOLS)
    for name in variant_names:
        for t in variants[name].get("tools", []):
            tools[t] = VARIANT_TOOLS[t]
    return tools


def ensure_tools(tools=TOOLS):
    missing = [t for t in tools if not shutil.which(t)]
    if not missing:
        return
    pkgs = sorted({tools[t] for t in missing})
    pre = sudo_prefix()
    if pre is None or not shutil.which("apt-get"):
        die(f"missing tools {missing}; install the packages {pkgs} (apt-get install -y ...)")
    log(f"installing {' '.join(pkgs)} (missing: {', '.join(missing)}) ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    rc, out, err = run_cmd(pre + ["apt-get", "install", "-y", "--no-install-recommends"] + pkgs,
                           timeout=900, env=env, check=False)
    if rc != 0:
        run_cmd(pre + ["apt-get", "update"], timeout=600, env=env)
        run_cmd(pre + ["apt-get", "install", "-y", "--no-install-recommends"] + pkgs,
                timeout=900, env=env)
    still = [t for t in tools if not shutil.which(t)]
    if still:
        die(f"still missing after apt-get: {still}")


def raise_nofile(want=65536):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def sidecar_binary():
    """$SIDECAR_BIN, else cargo build --release. Copied into workdir so a rebuild during the
    run cannot change the binary under measurement."""
    src = os.environ.get("SIDECAR_BIN")
    if src:
        src = Path(src)
        if not src.is_file():
            die(f"SIDECAR_BIN={src} is not a file")
    else:
        if not shutil.which("cargo"):
            die("set SIDECAR_BIN to a token-sidecar release binary, or install a Rust toolchain")
        log("building: cargo build --release ...")
        run_cmd(["cargo", "build", "--release", "--locked"], timeout=3600, cwd=REPO)
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
        if not target.is_absolute():
            target = REPO / target
        src = target / "release" / "token-sidecar"
        if not src.is_file():
            die(f"cargo build did not produce {src}")
    return str(src)


def newer_sources(binary, repo=REPO):
    """The sources of token-sidecar in `repo` changed after `binary` was written, newest first:
    a binary given in $SIDECAR_BIN that is older than them may not be the tree's build (built
    before an edit, or from an experiment whose edit was reverted)."""
    try:
        built = os.path.getmtime(binary)
    except OSError:
        return []
    repo = Path(repo)
    candidates = list((repo / "src").rglob("*.rs")) + [
        repo / "Cargo.toml", repo / "Cargo.lock", repo / "build.rs", repo / ".cargo" / "config.toml"]
    newer = []
    for f in candidates:
        try:
            t = f.stat().st_mtime
        except OSError:
            continue
        if t > built:
            newer.append((t, str(f.relative_to(repo))))
    return [name for _, name in sorted(newer, reverse=True)]


def few(names, n=5):
    """`names` joined for a message, the first `n` of them."""
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def copy_binary(src, workdir, name="sidecar-under-test"):
    # Not named token-sidecar: a `pkill -f token-sidecar` elsewhere must not stop the benchmark.
    dst = Path(workdir) / name
    shutil.copy2(src, dst)
    return str(dst)


def make_certs(d):
    """A throwaway CA and a server certificate for localhost / 127.0.0.1, signed by it."""
    d = Path(d)
    ossl = lambda *a: run_cmd(["openssl", *map(str, a)], timeout=60)
    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", d / "ca.key", "-out", d / "ca.pem", "-days", "2", "-subj", "/CN=bench test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", d / "server.key", "-out", d / "server.csr", "-subj", "/CN=localhost")
    (d / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ossl("x509", "-req", "-in", d / "server.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
         "-CAcreateserial", "-out", d / "server.pem", "-days", "2", "-extfile", d / "server.ext")
    for f in ("ca.pem", "server.pem", "server.key"):
        os.chmod(d / f, 0o644)


def nginx_temp_paths(d, prefix):
    have = run_cmd(["nginx", "-V"], timeout=10)[2]
    lines = [f"  client_body_temp_path {d}/{prefix}-body;", f"  proxy_temp_path {d}/{prefix}-proxy;"]
    for mod in ("fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{mod}_module" not in have:
            lines.append(f"  {mod}_temp_path {d}/{prefix}-{mod};")
    return "\n".join(lines)


def render(template, dest, **vars):
    text = (CONF / template).read_text()
    for k, v in vars.items():
        text = text.replace(f"@{k}@", str(v))
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        die(f"{template}: unfilled {left}")
    Path(dest).write_text(text)
    return dest


def nginx_server(name, conf, d):
    return Server(name, ["nginx", "-e", "stderr", "-p", str(d), "-c", str(conf),
                         "-g", "daemon off;"], Path(d) / f"{name}.log")


# --------------------------------------------------------------------------------------------
# the upstream and the proxies

class Upstream:
    def __init__(self, d):
        self.d = Path(d)
        self.port, self.tls_port = free_port(), free_port()
        conf = render("upstream.conf", self.d / "upstream.conf", DIR=self.d,
                      UPSTREAM_PORT=self.port, UPSTREAM_TLS_PORT=self.tls_port,
                      TEMP_PATHS=nginx_temp_paths(self.d, "upstream"))
        run_cmd(["nginx", "-e", "stderr", "-t", "-q", "-p", str(self.d), "-c", str(conf)], timeout=20)
        self.server = nginx_server("upstream", conf, self.d)
        wait_port(self.port, self.server)
        wait_port(self.tls_port, self.server)
        self.tokens_log = self.d / "tokens.log"

    def check(self):
        st, body = http("GET", f"http://127.0.0.1:{self.port}/")
        if st != 200 or body.strip() != "auth=":
            die(f"upstream answers {st} {body!r}")
        st, body = http("POST", f"http://127.0.0.1:{self.port}/post", body=b"x" * 4096)
        if st != 200 or body.strip() != "auth=":
            die(f"upstream POST answers {st} {body!r}")


class Redis:
    """A redis-server of our own for one variant (`get-rl-shared`): loopback, a free port, no
    persistence."""

    def __init__(self, d, tag):
        self.d = Path(d)
        self.port = free_port()
        self.server = Server(tag, ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no", "--dir", str(self.d)],
                             self.d / f"{tag}.log")
        wait_port(self.port, self.server)

    def url(self, db=0):
        return f"redis://127.0.0.1:{self.port}/{db}"

    def pids(self):
        return self.server.pids()

    def stop(self):
        self.server.stop()


def rate_limit_config(listen, upstream, token, group=RL_GROUP, match=RL_MATCH, rate=RL_RATE):
    """The sidecar's config file for the rate-decision variants: the `get` route (its listener,
    its upstream, a static token) and one [[route.limit]] rule over `match` at `rate`."""
    q = json.dumps   # a JSON string of printable ASCII is a TOML basic string
    return "\n".join([
        "# bench/run.py: the `get` route, plus one rate rule that every request passes through",
        "[[route]]",
        'name = "bench"',
        f"listen = {q(listen)}",
        f"upstream = {q(upstream)}",
        'token = "bench"',
        "",
        "[[route.limit]]",
        f"group = {q(group)}",
        f"match = [{', '.join(q(m) for m in match)}]",
        f"rate = {q(rate)}",
        "",
        "[token.bench]",
        'grant = "static"',
        f"static_token = {q(token)}",
        "",
    ])


def rule_problem(limits, shared, group=RL_GROUP):
    """What keeps a rate-decision instance from deciding every request, from its admin
    `/rate-limits` document (`limits`); None when its one route has a rule of `group` with a
    rate, shared through a Redis that answers when `shared`."""
    routes = limits.get("routes") or {}
    if len(routes) != 1:
        return f"/rate-limits shows {len(routes)} routes, want 1: {json.dumps(limits)[:500]}"
    (route, r), = routes.items()
    if r.get("mode") == "off":
        return f"route {route}: rate limits are off"
    if not any(x.get("group") == group and x.get("rate") for x in r.get("rules") or []):
        return f"route {route}: no rule of group {group!r} with a rate: {json.dumps(r)[:500]}"
    up = (r.get("shared") or {}).get("up")
    if shared and up is not True:
        return (f"route {route}: the rate limits are not shared through Redis (shared: "
                f"{json.dumps(r.get('shared'))})")
    if not shared and r.get("shared") is not None:
        return f"route {route}: the rate limits are shared, want local ones"
    return None


def sidecar_argv(binary, port, admin_port, upstream, ca=None, token_file=None, config=None,
                 redis_url=None):
    """`token-sidecar run` as the benchmark runs it. With `config` (a file from
    `rate_limit_config`) the route and its token come from the file; else from flags."""
    argv = [binary, "run", "--threads", "1", "--log-format", "text", "--shutdown-grace", "1s",
            "--admin-listen", f"127.0.0.1:{admin_port}"]
    if config:
        argv += ["--config", str(config)]
    else:
        argv += ["--listen", f"127.0.0.1:{port}", "--upstream", upstream]
        if ca:
            argv += ["--upstream-ca-file", str(ca)]
        if token_file:
            argv += ["--grant", "file", "--token-file", str(token_file)]
        else:
            argv += ["--grant", "static", "--static-token", "abc"]
    if redis_url:
        argv += ["--redis-url", redis_url]
    return argv


class Proxy:
    """One proxy instance configured for one variant."""

    def __init__(self, kind, d, upstream, variant, sidecar_bin=None, token_file=None,
                 baseline_bin=None, reference_bin=None, redis=None):
        self.kind, self.d = kind, Path(d)
        self.port = free_port()
        self.admin_port = None
        # "local" or "shared" when this instance takes a rate decision per request; the
        # reference instance (SIDECAR_GET) runs the `get` configuration.
        self.rate_limit = variant.get("rate_limit") if kind in (SIDECAR, BASELINE) else None
        self.redis = redis if self.rate_limit == "shared" else None
        tls = variant.get("tls_upstream", False)
        h2 = variant.get("h2", False)
        up_port = upstream.tls_port if tls else upstream.port
        ca = self.d / "ca.pem"
        tag = f"{kind}-{variant['name']}"
        if kind in (SIDECAR, BASELINE, SIDECAR_GET):
            self.admin_port = free_port()
            binary = {SIDECAR: sidecar_bin, BASELINE: baseline_bin,
                      SIDECAR_GET: reference_bin or sidecar_bin}[kind]
            up_url = f"{'https' if tls else 'http'}://127.0.0.1:{up_port}"
            config = redis_url = None
            if self.rate_limit:
                config = self.d / f"{tag}.toml"
                config.write_text(rate_limit_config(f"127.0.0.1:{self.port}", up_url, "abc"))
                if self.redis:
                    # Each build its own database: their windows do not mix.
                    redis_url = self.redis.url(1 if kind == BASELINE else 0)
            argv = sidecar_argv(binary, self.port, self.admin_port, up_url, ca=ca if tls else None,
                                token_file=token_file, config=config, redis_url=redis_url)
            env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEN_SIDECAR_")}
            env["TOKEN_SIDECAR_LOG"] = "warn"
            if config:
                # as nginx -t and haproxy -c for theirs: the configuration is checked first
                rc, out, err = run_cmd([binary, "check"] + argv[2:], timeout=20, env=env,
                                       check=False)
                if rc != 0:
                    die(f"{kind}: token-sidecar check failed (exit {rc}) for {config}:\n"
                        f"{(out + err)[-3000:]}")
            self.server = Server(tag, argv, self.d / f"{tag}.log", env=env)
        elif kind == NGINX:
            up_tls = ""
            if tls:
                up_tls = "\n".join([
                    "      proxy_ssl_verify on;",
                    f"      proxy_ssl_trusted_certificate {ca};",
                    "      proxy_ssl_name localhost;",
                    "      proxy_ssl_server_name on;",
                    "      proxy_ssl_session_reuse on;",
                ])
            conf = render("nginx-proxy.conf", self.d / f"{tag}.conf", DIR=self.d,
                          LISTEN_PORT=self.port, LISTEN_OPTS=" http2" if h2 else "",
                          UPSTREAM_PORT=up_port, SCHEME="https" if tls else "http",
                          UPSTREAM_TLS=up_tls, TEMP_PATHS=nginx_temp_paths(self.d, tag))
            # one pid file per instance
            text = Path(conf).read_text().replace("nginx-proxy.pid", f"{tag}.pid")
            Path(conf).write_text(text)
            run_cmd(["nginx", "-e", "stderr", "-t", "-q", "-p", str(self.d), "-c", str(conf)], timeout=20)
            self.server = nginx_server(tag, conf, self.d)
        elif kind == HAPROXY:
            server_opts = (f" ssl verify required ca-file {ca} sni str(localhost) verifyhost localhost"
                           if tls else "")
            conf = render("haproxy.cfg", self.d / f"{tag}.cfg", LISTEN_PORT=self.port,
                          BIND_OPTS=" proto h2" if h2 else "", UPSTREAM_PORT=up_port,
                          SERVER_OPTS=server_opts)
            run_cmd(["haproxy", "-c", "-q", "-f", str(conf)], timeout=20)
            self.server = Server(tag, ["haproxy", "-f", str(conf), "-db"], self.d / f"{tag}.log")
        elif kind == DIRECT:
            self.server = upstream.server
            self.port = up_port
            return
        else:
            raise ValueError(kind)
        wait_port(self.port, self.server)
        if self.admin_port:
            self._wait_ready()
        if self.rate_limit:
            self._check_rule()

    def admin(self, path):
        st, body = http("GET", f"http://127.0.0.1:{self.admin_port}{path}")
        if st != 200:
            die(f"{self.kind}: admin {path} answered {st}: {body[:500]}")
        return body

    def _check_rule(self):
        """Fails loudly unless the route's rule is in force, and shared when it should be."""
        try:
            limits = json.loads(self.admin("/rate-limits"))
        except ValueError as e:
            die(f"{self.kind}: /rate-limits is not JSON: {e}")
        problem = rule_problem(limits, shared=self.rate_limit == "shared")
        if problem:
            die(f"{self.kind}: {problem}\n{self.server.log_tail()}")

    def _wait_ready(self, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.server.alive():
                die(f"{self.kind} exited:\n{self.server.log_tail()}")
            try:
                if http("GET", f"http://127.0.0.1:{self.admin_port}/readyz", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        die(f"{self.kind} not ready after {timeout:.0f}s:\n{self.server.log_tail()}")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def pids(self):
        return self.server.pids()

    def stop(self):
        if self.kind != DIRECT:
            self.server.stop()


def check_injection(proxy, variant, expected_token="abc"):
    """Fails loudly unless a request through the proxy reaches the upstream with the header."""
    want = f"auth=Bearer {expected_token}"
    if proxy.kind == DIRECT:
        want = "auth="
    path = variant.get("path", "/")
    if variant.get("h2"):
        rc, out, err = run_cmd(["curl", "-sS", "--http2-prior-knowledge", "-m", "5",
                                "-w", "\n%{http_code} %{http_version}", proxy.url + path],
                               timeout=15, check=False)
        lines = out.rstrip("\n").split("\n")
        status_ver = lines[-1].split() if lines else []
        body = "\n".join(lines[:-1]).strip()
        if rc != 0 or status_ver != ["200", "2"] or body != want:
            die(f"{proxy.kind}: h2c GET {path} gave rc={rc} {status_ver} {body!r} {err.strip()}, "
                f"want 200 over HTTP/2 with {want!r}")
        return
    st, body = http("GET", proxy.url + path)
    if st != 200 or body.strip() != want:
        die(f"{proxy.kind}: GET {path} answered {st} {body!r}, want 200 {want!r}\n"
            f"{proxy.server.log_tail()}")
    if variant.get("body"):
        n = min(variant["body"], 1 << 20)
        st, body = http("POST", proxy.url + path, body=b"y" * n, timeout=15)
        if st != 200 or body.strip() != want:
            die(f"{proxy.kind}: POST {path} ({n} bytes) answered {st} {body!r}, want 200 {want!r}")


# --------------------------------------------------------------------------------------------
# load generators

def run_wrk(url, variant, duration, d):
    argv = ["wrk", "-t", str(variant["threads"]), "-c", str(variant["conns"]),
            "-d", f"{duration}s", "--timeout", "5s", "-s", str(LUA), url, "--",
            str(variant.get("body", 0)), variant.get("path", "/")]
    rc, out, err = run_cmd(argv, timeout=duration + 60)
    m = re.search(r"^BENCHJSON (\{.*\})$", out, re.M)
    if not m:
        die(f"no result from wrk:\n{out}\n{err}")
    r = json.loads(m.group(1))
    secs = r["duration_us"] / 1e6
    lat = r["latency_us"]
    errs = r["errors"]
    return dict(requests=r["requests"], seconds=secs, rps=r["requests"] / secs,
                p50_ms=lat["p50"] / 1000, p99_ms=lat["p99"] / 1000, p999_ms=lat["p999"] / 1000,
                mean_ms=lat["mean"] / 1000, max_ms=lat["max"] / 1000,
                errors=sum(errs.values()), errors_detail=errs)


def _unit_to_ms(v, unit):
    return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def percentile(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = math.ceil(p / 100.0 * len(sorted_vals)) - 1   # nearest rank
    return sorted_vals[max(0, min(len(sorted_vals) - 1, k))]


def run_h2load(url, variant, duration, d):
    logf = Path(d) / "h2load.tsv"
    if logf.exists():
        logf.unlink()
    argv = ["h2load", "-t", str(variant["threads"]), "-c", str(variant["conns"]),
            "-m", str(variant["streams"]), "-D", str(duration), "--log-file", str(logf),
            url + variant.get("path", "/")]
    rc, out, err = run_cmd(argv, timeout=duration + 60)
    m = re.search(r"finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", out)
    mr = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                   r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    ms = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (m and mr and ms):
        die(f"cannot parse h2load output:\n{out}\n{err}")
    secs = _unit_to_ms(m.group(1), m.group(2)) / 1000
    total, started, done, ok, failed, errored, timeout = map(int, mr.groups())
    s2, s3, s4, s5 = map(int, ms.groups())
    lat = []
    try:
        with open(logf) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3:
                    lat.append(int(parts[2]))
    except OSError:
        pass
    lat.sort()
    mean = (sum(lat) / len(lat) / 1000) if lat else float("nan")
    return dict(requests=ok, seconds=secs, rps=ok / secs if secs else 0.0,
                p50_ms=percentile(lat, 50) / 1000, p99_ms=percentile(lat, 99) / 1000,
                p999_ms=percentile(lat, 99.9) / 1000, mean_ms=mean,
                max_ms=(lat[-1] / 1000 if lat else float("nan")),
                errors=failed + errored + timeout + s4 + s5,
                errors_detail=dict(failed=failed, errored=errored, timeout=timeout,
                                   status_4xx=s4, status_5xx=s5))


def steal_ticks():
    """CPU time the hypervisor gave to other guests (all CPUs)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return v[7] if len(v) > 7 else 0


def busy_ticks():
    """CPU time spent by every process on the machine (user + nice + system, all CPUs)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return v[0] + v[1] + v[2]


def own_ticks(pids):
    """CPU time of the benchmark itself: the servers in `pids`, this script and the load
    generators it has waited for."""
    t = os.times()
    return cpu_ticks(pids) + (t.user + t.system + t.children_user + t.children_system) * CLK_TCK


def other_cpu_pct(pids, seconds):
    """Percent of one core used by processes outside the benchmark over `seconds` of idleness."""
    b0, o0, w0 = busy_ticks(), own_ticks(pids), time.monotonic()
    time.sleep(seconds)
    return max(0.0, (busy_ticks() - b0) - (own_ticks(pids) - o0)) / CLK_TCK / (time.monotonic() - w0) * 100


def wait_quiet(pids, max_pct, max_wait):
    """Waits until processes outside the benchmark use less than max_pct% of a core (5 s windows)."""
    deadline = time.monotonic() + max_wait
    while True:
        pct = other_cpu_pct(pids, 5.0)
        if pct < max_pct:
            return pct
        if time.monotonic() > deadline:
            log(f"  warning: other processes still use {pct:.0f}% of a core; going on")
            return pct
        log(f"  waiting: other processes use {pct:.0f}% of a core (want < {max_pct:.0f}%) ...")


def measure(proxy, variant, duration, d, upstream, redis=None):
    """One run against one proxy: load + CPU time + peak RSS of the proxy's processes, and the
    CPU used meanwhile by processes outside the benchmark (a busy machine skews the numbers).
    `redis`, the variant's redis-server, is part of the benchmark; when the proxy uses it, its
    CPU time per request is recorded too."""
    pids = proxy.pids()
    redis_pids = redis.pids() if redis else []
    all_pids = sorted(set(pids) | set(upstream.server.pids()) | set(redis_pids))
    sampler = RssSampler(pids)
    u0, s0 = cpu_split(pids)
    rd0 = cpu_ticks(redis_pids)
    b0, o0, w0, st0 = busy_ticks(), own_ticks(all_pids), time.monotonic(), steal_ticks()
    sampler.start()
    try:
        load_start = time.monotonic()
        if variant["tool"] == "h2load":
            r = run_h2load(proxy.url, variant, duration, d)
        else:
            r = run_wrk(proxy.url, variant, duration, d)
        # When the load tool was started and when it had exited (`rotate` counts the tokens
        # current within this window).
        r["load_start"], r["load_end"] = load_start, time.monotonic()
    finally:
        peak = sampler.stop()
    u1, s1 = cpu_split(pids)
    user_s, sys_s = (u1 - u0) / CLK_TCK, (s1 - s0) / CLK_TCK
    cpu_s = user_s + sys_s
    other = max(0.0, (busy_ticks() - b0) - (own_ticks(all_pids) - o0))
    r["cpu_s"] = cpu_s
    per_req = lambda secs: secs * 1e6 / r["requests"] if r["requests"] else float("nan")
    r["cpu_us_per_req"] = per_req(cpu_s)
    # Split in two: the kernel's share (system calls, the loopback TCP stack) is much the same
    # for every proxy, the user share is each proxy's own code.
    r["user_us_per_req"], r["sys_us_per_req"] = per_req(user_s), per_req(sys_s)
    if redis and proxy.redis:
        r["redis_cpu_us_per_req"] = per_req((cpu_ticks(redis_pids) - rd0) / CLK_TCK)
    r["peak_rss_mib"] = peak / 1024
    r["other_cpu_pct"] = other / CLK_TCK / (time.monotonic() - w0) * 100
    r["steal_pct"] = (steal_ticks() - st0) / CLK_TCK / (time.monotonic() - w0) * 100
    return r


# --------------------------------------------------------------------------------------------
# token rotation (the `rotate` variant)

class Rotator(threading.Thread):
    """Replaces the token file every `interval` seconds: write a temporary file, rename it."""

    def __init__(self, path, interval=1.0):
        super().__init__(daemon=True)
        self.path, self.interval = Path(path), interval
        self.n = 0
        self.written = []
        self.log = []   # (monotonic time, token)
        self._stop_evt = threading.Event()
        self.write()

    def write(self):
        self.n += 1
        tok = f"rot{self.n:05d}"
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(tok + "\n")
        os.replace(tmp, self.path)
        self.written.append(tok)
        self.log.append((time.monotonic(), tok))
        self.current = tok

    def expected(self, start, end, settle=0.2):
        """Tokens that must reach the upstream from a load running from `start` to `end`
        (monotonic), each with the time it was written: every one that was current for at
        least `settle` seconds of the load (the proxy picks a new file up within tens of
        milliseconds; a token replaced in the first instant of a run, or written in its last,
        may serve no request)."""
        out = {}
        for i, (t, tok) in enumerate(self.log):
            replaced = self.log[i + 1][0] if i + 1 < len(self.log) else float("inf")
            if min(replaced, end) - max(t, start) >= settle:
                out[tok] = t
        return out

    def run(self):
        while not self._stop_evt.wait(self.interval):
            self.write()

    def stop(self):
        self._stop_evt.set()
        self.join(timeout=3)


def tokens_seen(logfile, offset):
    """Tokens the upstream received since `offset` in its log: (distinct set, requests, new offset)."""
    try:
        with open(logfile, "rb") as f:
            f.seek(offset)
            data = f.read()
            end = f.tell()
    except FileNotFoundError:
        return set(), 0, offset
    # only whole lines
    cut = data.rfind(b"\n") + 1
    data = data[:cut]
    lines = data.split(b"\n")[:-1] if data else []
    return {l.decode(errors="replace") for l in set(lines)}, len(lines), offset + cut


def log_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# --------------------------------------------------------------------------------------------
# reporting

def no_nan(x):
    """NaN is not JSON: write null."""
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: no_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [no_nan(v) for v in x]
    return x


def median(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def summarize(rounds):
    return dict(
        rps=median([r["rps"] for r in rounds]),
        rps_min=min(r["rps"] for r in rounds),
        rps_max=max(r["rps"] for r in rounds),
        p50_ms=median([r["p50_ms"] for r in rounds]),
        p99_ms=median([r["p99_ms"] for r in rounds]),
        p999_ms=median([r["p999_ms"] for r in rounds]),
        cpu_us_per_req=median([r["cpu_us_per_req"] for r in rounds]),
        user_us_per_req=median([r["user_us_per_req"] for r in rounds]),
        sys_us_per_req=median([r["sys_us_per_req"] for r in rounds]),
        peak_rss_mib=max(r["peak_rss_mib"] for r in rounds),
        requests=sum(r["requests"] for r in rounds),
        errors=sum(r["errors"] for r in rounds),
        other_cpu_pct_max=max(r.get("other_cpu_pct", 0.0) for r in rounds),
    ) | ({"redis_cpu_us_per_req": median([r["redis_cpu_us_per_req"] for r in rounds])}
         if rounds and all("redis_cpu_us_per_req" in r for r in rounds) else {})


def proxy_label(kind, res):
    """How a proxy is named in a variant's tables: its kind, or the variant's label for it
    (the rate-decision variants: "token-sidecar (rate decision)", "token-sidecar (no rule)")."""
    return res.get("labels", {}).get(kind, kind)


def redis_cpu(res):
    """The median CPU time of the variant's redis-server per request, by proxy using it."""
    return {k: pr["summary"]["redis_cpu_us_per_req"] for k, pr in res["proxies"].items()
            if "redis_cpu_us_per_req" in pr["summary"]}


def prometheus_samples(text, name):
    """The samples of metric `name` in Prometheus' text format: (labels, value) pairs."""
    out = []
    for line in text.splitlines():
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out.append((labels, float(m.group(3))))
    return out


def rate_limit_stats(metrics, shared):
    """What a rate-decision instance counted since it started, from its /metrics: requests
    answered and those not 2xx, requests that waited for or were refused by a rate or a block,
    and when `shared` the rate decisions taken in Redis and Redis's failures (each of which
    makes the decisions local for a while)."""
    requests = prometheus_samples(metrics, "token_sidecar_requests_total")
    stats = dict(
        requests=int(sum(v for _, v in requests)),
        non_2xx=int(sum(v for l, v in requests if not l.get("status", "").startswith("2"))),
        rate_limited=int(sum(v for _, v in prometheus_samples(metrics,
                                                               "token_sidecar_rate_limited_total"))),
    )
    if shared:
        ops = prometheus_samples(metrics, "token_sidecar_shared_store_operations_total")
        stats["redis_decisions"] = int(sum(v for l, v in ops
                                           if l.get("op") == "rate" and l.get("result") == "ok"))
        stats["redis_failures"] = int(sum(v for l, v in ops if l.get("result") != "ok"))
    return stats


def rate_limit_line(who, stats):
    """One line of `rate_limit_stats`."""
    out = (f"rate decisions, {who}: {stats['requests']:,} requests, {stats['non_2xx']} not 2xx, "
           f"{stats['rate_limited']} waited or refused")
    if "redis_decisions" in stats:
        out += (f", {stats['redis_decisions']:,} decided in Redis, "
                f"{stats['redis_failures']} Redis failures")
    return out


def rate_limit_problems(name, kind, stats):
    """What makes a rate-decision variant's numbers not the cost of a decision that lets every
    request go at once (each one fails the run)."""
    out = []
    if stats["non_2xx"]:
        out.append(f"{name}/{kind}: token-sidecar answered {stats['non_2xx']} requests with "
                   f"another status than 2xx")
    if stats["rate_limited"]:
        out.append(f"{name}/{kind}: {stats['rate_limited']} requests waited for or were refused "
                   f"by the rate {RL_RATE}: the load reached it")
    if "redis_decisions" in stats:
        if stats["redis_failures"]:
            out.append(f"{name}/{kind}: {stats['redis_failures']} Redis operations failed; "
                       f"decisions were local meanwhile")
        if stats["redis_decisions"] < stats["requests"]:
            out.append(f"{name}/{kind}: only {stats['redis_decisions']:,} of "
                       f"{stats['requests']:,} requests were decided in Redis")
    return out


def fmt(v, nd=2):
    if v is None or v != v:
        return "-"
    return f"{v:,.{nd}f}"


def table(variant_name, res):
    cols = ["proxy", "req/s", "spread", "p50 ms", "p99 ms", "p99.9 ms", "CPU us/req",
            "user", "sys", "peak RSS MiB", "idle RSS MiB", "errors", "other CPU"]
    rows = []
    for kind, pr in res["proxies"].items():
        s = pr["summary"]
        spread = (s["rps_max"] - s["rps_min"]) / s["rps"] * 100 if s["rps"] else float("nan")
        rows.append([proxy_label(kind, res), fmt(s["rps"], 0), f"±{spread / 2:.1f}%", fmt(s["p50_ms"], 3),
                     fmt(s["p99_ms"], 3), fmt(s["p999_ms"], 3), fmt(s["cpu_us_per_req"], 1),
                     fmt(s["user_us_per_req"], 1), fmt(s["sys_us_per_req"], 1),
                     fmt(s["peak_rss_mib"], 1), fmt(pr.get("idle_rss_mib"), 1), str(s["errors"]),
                     f"{s['other_cpu_pct_max']:.0f}%"])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = lambda r: "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths)))
    out = [line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows]
    return "\n".join(out)


def ratios(res):
    p = res["proxies"]
    if SIDECAR not in p:
        return {}
    s = p[SIDECAR]["summary"]
    out = {}
    for other in (SIDECAR_GET, HAPROXY, NGINX, BASELINE):
        if other in p:
            o = p[other]["summary"]
            # Round i of each proxy ran back to back with the others' round i: the ratio within
            # a round is free of the machine's drift between rounds.
            paired = [a["rps"] / b["rps"] for a, b in zip(p[SIDECAR]["rounds"], p[other]["rounds"])
                      if b["rps"]]
            key = f"sidecar/{REFERENCE_NAMES.get(other, other)}"
            out[key] = dict(
                rps=s["rps"] / o["rps"] if o["rps"] else float("nan"),
                rps_rounds=paired,
                p99=s["p99_ms"] / o["p99_ms"] if o["p99_ms"] else float("nan"),
                cpu_per_req=(s["cpu_us_per_req"] / o["cpu_us_per_req"]
                             if o["cpu_us_per_req"] else float("nan")),
            )
            if other in REFERENCE_NAMES:
                # the same build without the feature: what the feature adds, in µs per request
                out[key]["cpu_us_added"] = s["cpu_us_per_req"] - o["cpu_us_per_req"]
            verdict = paired_verdict(paired)
            if verdict:
                out[key]["rps_paired"] = verdict
    return out


# Two-sided 95 % quantiles of Student's t distribution, by degrees of freedom (1-30); beyond,
# the normal distribution's 1.96 is within 2 %.
T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
       2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
       2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def paired_verdict(ratios):
    """From the per-round req/s ratios (token-sidecar / other, each round's pair measured back to
    back): their geometric mean, its 95 % confidence interval (Student's t on the logs, which
    treats a round at x0.5 and one at x2 alike) and the verdict it supports: "ahead" or
    "behind" when the interval excludes 1, "level" when it does not. None with fewer than 2
    rounds, where there is no spread to judge by."""
    logs = [math.log(r) for r in ratios if r > 0]
    n = len(logs)
    if n < 2:
        return None
    mean = statistics.fmean(logs)
    half = (T95[n - 2] if n - 1 <= len(T95) else 1.96) * statistics.stdev(logs) / math.sqrt(n)
    lo, hi = math.exp(mean - half), math.exp(mean + half)
    verdict = "ahead" if lo > 1 else "behind" if hi < 1 else "level"
    return dict(mean=math.exp(mean), lo=lo, hi=hi, verdict=verdict)


def cpu_added(ratio, us):
    """" (+1.2 us)": the CPU time per request a variant's feature adds (against the same build
    without it), or "" for a ratio with another proxy."""
    if "cpu_us_added" not in ratio:
        return ""
    return f" ({ratio['cpu_us_added']:+.1f} {us})"


def per_round(ratio, times):
    """The req/s ratio round by round: its range, in how many rounds token-sidecar was ahead, and
    what the rounds together say (`paired_verdict`)."""
    rounds = ratio.get("rps_rounds") or []
    if not rounds:
        return "no paired rounds"
    ahead = sum(1 for r in rounds if r > 1)
    out = (f"per round {times}{min(rounds):.2f}-{max(rounds):.2f}, "
           f"ahead in {ahead} of {len(rounds)}")
    v = ratio.get("rps_paired")
    if v:
        out += (f"; mean {times}{v['mean']:.2f}, 95% CI {times}{v['lo']:.2f}-{v['hi']:.2f}: "
                f"{v['verdict']}")
    return out


VERDICT_WORDS = {"ahead": "ahead of", "behind": "behind", "level": "level with"}
# against the same build without the feature (a `reference` variant)
REFERENCE_WORDS = {"ahead": "faster", "behind": "slower", "level": "level"}


def verdicts(results):
    """One line per variant: token-sidecar against each proxy, as the paired rounds judge it;
    against the same build without the variant's feature, as a share of its req/s
    ("x0.97 of get (level, x0.93-1.02)")."""
    lines = []
    for name, res in results.items():
        parts = []
        for k, v in res.get("ratios", {}).items():
            p = v.get("rps_paired")
            other = k.split("/", 1)[1]
            if other in REFERENCE_NAMES.values():
                parts.append(f"x{p['mean']:.2f} of {other} ({REFERENCE_WORDS[p['verdict']]}, "
                             f"x{p['lo']:.2f}-{p['hi']:.2f})" if p else
                             f"x{v['rps']:.2f} of {other} (too few rounds to judge)")
                continue
            parts.append(f"{VERDICT_WORDS[p['verdict']]} {other} (x{p['lo']:.2f}-{p['hi']:.2f})"
                         if p else f"{other}: too few rounds to judge")
        if parts:
            lines.append(f"{name:16s} " + "; ".join(parts))
    return lines


def markdown(info, settings, results):
    """The results as Markdown tables (bench/results/latest.md), for docs/benchmarks.md."""
    out = [f"Run {info['date']}: `{info['token_sidecar']}` (binary built "
           f"{info.get('token_sidecar_built', '?')}, sha256 {info.get('token_sidecar_sha256', '?')}…; "
           f"tree {info['git']}"
           + (f"; OLDER THAN THE TREE'S SOURCES: {few(info['token_sidecar_older_than'])}"
              if info.get("token_sidecar_older_than") else "") + "), "
           f"{settings['rounds']} round(s) x {settings['duration']} s after a {settings['warmup']} s "
           f"warm-up; load average {info['loadavg_start']} at the start, "
           f"{info.get('loadavg_end', '?')} at the end.", ""]
    out.append(f"Machine: {info['nproc']} CPUs ({info['cpu_model']}), {info['memory']}, Linux "
               f"{info['kernel']}, {info['os']}; {info['nginx']}, {info['haproxy'].split(' - ')[0]}, "
               f"{info['wrk'].split(' Copyright')[0]}, {info['h2load']}.")
    for name, res in results.items():
        out += ["", f"#### `{name}`: {res['desc']}", "",
                "| proxy | req/s | spread | p50 ms | p99 ms | p99.9 ms | CPU µs/req | user | sys | peak RSS MiB | idle RSS MiB | errors |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for kind, pr in res["proxies"].items():
            s = pr["summary"]
            spread = (s["rps_max"] - s["rps_min"]) / s["rps"] * 50 if s["rps"] else float("nan")
            out.append(f"| {proxy_label(kind, res)} | {fmt(s['rps'], 0)} | ±{spread:.0f}% | {fmt(s['p50_ms'], 2)} | {fmt(s['p99_ms'], 2)} "
                       f"| {fmt(s['p999_ms'], 2)} | {fmt(s['cpu_us_per_req'], 1)} "
                       f"| {fmt(s['user_us_per_req'], 1)} | {fmt(s['sys_us_per_req'], 1)} "
                       f"| {fmt(s['peak_rss_mib'], 1)} | {fmt(pr.get('idle_rss_mib'), 1)} | {s['errors']} |")
        if res["ratios"]:
            out.append("")
            out.append("; ".join(f"{k}: req/s ×{v['rps']:.2f} ({per_round(v, '×')}), "
                                 f"p99 ×{v['p99']:.2f}, CPU/req ×{v['cpu_per_req']:.2f}"
                                 f"{cpu_added(v, 'µs')}"
                                 for k, v in res["ratios"].items()))
        if res["extra"].get("rate_limit"):
            out.append("")
            line = "; ".join(rate_limit_line(proxy_label(k, res), x)
                             for k, x in res["extra"]["rate_limit"].items())
            out.append(line[0].upper() + line[1:] + ".")
        redis = redis_cpu(res)
        if redis:
            out.append("")
            out.append("redis-server CPU per request: " + ", ".join(
                f"{proxy_label(k, res)} {v:.1f} µs" for k, v in redis.items()) + ".")
        busiest = max(pr["summary"]["other_cpu_pct_max"] for pr in res["proxies"].values())
        out.append("")
        out.append(f"Processes outside the benchmark used at most {busiest:.0f}% of a core during "
                   f"these runs.")
        if "rotate" in res["extra"]:
            x = res["extra"]["rotate"]
            out.append("")
            out.append(f"Rotation: {x['tokens_written']} tokens written to the file during the "
                       f"measured runs, {x['distinct_tokens_upstream']} distinct tokens seen by the "
                       f"upstream, {x['unknown_tokens_upstream']} unexpected; of the "
                       f"{x['tokens_expected']} current for at least 0.2 s of a run's load, "
                       f"{x['expected_missing']} never reached the upstream.")
    v = verdicts(results)
    if v:
        out += ["", "Verdicts (req/s, the 95 % confidence interval of the paired per-round ratio):",
                "", "```", *v, "```"]
    return "\n".join(out) + "\n"


def machine_info(sidecar_src, sidecar_bin):
    def first_line(argv):
        try:
            rc, out, err = run_cmd(argv, timeout=10, check=False)
            return (out + err).strip().splitlines()[0] if (out + err).strip() else "?"
        except (BenchError, OSError):
            return "?"

    cpu_model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, AttributeError):
        pass
    git = "?"
    try:
        rc, out, _ = run_cmd(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                             timeout=10, check=False)
        git = out.strip() or "?"
    except (BenchError, OSError):
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": first_line(["nproc"]),
        "cpu_model": cpu_model,
        "memory": mem,
        "kernel": platform.release(),
        "os": first_line(["sh", "-c", ". /etc/os-release 2>/dev/null && echo $PRETTY_NAME"]),
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "token_sidecar": first_line([sidecar_bin, "--version"]),
        "token_sidecar_binary": sidecar_src,
        "token_sidecar_built": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(sidecar_src))),
        "token_sidecar_sha256": hashlib.sha256(Path(sidecar_bin).read_bytes()).hexdigest()[:16],
        "git": git,
        "nginx": first_line(["nginx", "-v"]),
        "haproxy": first_line(["haproxy", "-v"]),
        "wrk": first_line(["wrk", "-v"]),
        "h2load": first_line(["h2load", "--version"]),
        "openssl": first_line(["openssl", "version"]),
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------------------------

def variant_kinds(variant, selected, direct=True):
    """The proxies a variant measures, in slot order: those of `selected` (--proxies) it
    supports; right after token-sidecar, the same build with the `get` configuration when the
    variant is measured against it (`reference`); the upstream without a proxy when it has that
    row (`direct_baseline`) and `direct`."""
    kinds = [k for k in variant.get("proxies", PROXIES) if k in selected]
    if variant.get("reference") and SIDECAR in kinds:
        kinds.insert(kinds.index(SIDECAR) + 1, SIDECAR_GET)
    if variant.get("direct_baseline") and direct:
        kinds.append(DIRECT)
    return kinds


def run_variant(name, variant, args, d, upstream, sidecar_bin, baseline_bin=None,
                reference_bin=None):
    """`reference_bin`: the build the `reference` slot runs (default `sidecar_bin`; the build
    under test also when the two builds swap slots)."""
    variant = dict(variant, name=name)
    kinds = variant_kinds(variant, args.proxies, direct=not args.no_baseline)
    if not kinds:
        return None
    log(f"\n=== {name}: {variant['desc']}")
    rotator = None
    redis = None
    proxies = {}
    extra = {}
    try:
        token_file = None
        if variant.get("rotate"):
            token_file = Path(d) / "token"
            rotator = Rotator(token_file)
        if variant.get("rate_limit") == "shared":
            redis = Redis(d, f"redis-{name}")
            log(f"  redis-server on 127.0.0.1:{redis.port}")
        for kind in kinds:
            proxies[kind] = Proxy(kind, d, upstream, variant, sidecar_bin=sidecar_bin,
                                  token_file=token_file, baseline_bin=baseline_bin,
                                  reference_bin=reference_bin, redis=redis)
        # the header is injected by each one
        for kind, p in proxies.items():
            check_injection(p, variant, expected_token=rotator.current if rotator else "abc")
        log("  header check: " + ", ".join(f"{k} ok" for k in proxies))
        time.sleep(0.3)
        idle = {k: rss_kib(p.pids()) / 1024 for k, p in proxies.items() if k != DIRECT}
        if rotator:
            rotator.start()
        if any(p.rate_limit for p in proxies.values()):
            log("  rate rule check: " + ", ".join(f"{k} {p.rate_limit} ok"
                                                  for k, p in proxies.items() if p.rate_limit))
        # warm-up, interleaved
        for kind, p in proxies.items():
            measure(p, variant, args.warmup, d, upstream, redis=redis)
        results = {k: [] for k in proxies}
        discarded = {k: [] for k in proxies}   # rounds repeated because the machine was busy
        rot_rounds = []
        all_pids = sorted({pid for p in proxies.values() for pid in p.pids()}
                          | set(upstream.server.pids()) | set(redis.pids() if redis else []))
        rnd, retries = 0, 0
        while rnd < args.rounds:
            if args.max_other_cpu is not None:
                wait_quiet(all_pids, args.max_other_cpu, args.max_wait)
            this_round = {}
            # Each round starts with the next proxy (A B C, B C A, C A B, ...), so that none
            # always runs right after a warm-up, a quiet wait or the same neighbour.
            order = list(proxies.items())
            shift = (rnd + retries) % len(order)
            for kind, p in order[shift:] + order[:shift]:
                time.sleep(0.5)   # let the previous run's connections close, logs flush
                off = log_size(upstream.tokens_log) if rotator else 0
                w0 = rotator.n if rotator else 0
                r = measure(p, variant, args.duration, d, upstream, redis=redis)
                if rotator:
                    time.sleep(0.3)   # let the upstream flush its token log
                    seen, n_up, _ = tokens_seen(upstream.tokens_log, off)
                    written = set(f"Bearer {t}" for t in rotator.written)
                    t0, t1 = r["load_start"], r["load_end"]
                    want = rotator.expected(t0, t1)
                    expected = set(f"Bearer {t}" for t in want)
                    for tok, t in sorted(want.items(), key=lambda x: x[1]):
                        if f"Bearer {tok}" not in seen:
                            log(f"  {tok} never reached the upstream: written {t - t0:+.3f} s "
                                f"from the load's start, {t1 - t:.3f} s before its end")
                    r["rotate"] = dict(tokens_written=rotator.n - w0 + 1,
                                       tokens_expected=len(expected),
                                       expected_missing=len(expected - seen),
                                       distinct_tokens_upstream=len(seen),
                                       unknown_tokens_upstream=len(seen - written),
                                       upstream_requests_logged=n_up)
                this_round[kind] = r
                log(f"  round {rnd + 1}/{args.rounds} {kind:17s} {r['rps']:>10,.0f} req/s  "
                    f"p99 {r['p99_ms']:7.3f} ms  cpu {r['cpu_us_per_req']:6.1f} us/req "
                    f"({r['user_us_per_req']:.1f} user)  "
                    f"rss {r['peak_rss_mib']:6.1f} MiB  errors {r['errors']}  "
                    f"other {r['other_cpu_pct']:3.0f}%"
                    + (f"  steal {r['steal_pct']:.0f}%" if r["steal_pct"] >= 1 else "")
                    + (f"  tokens {r['rotate']['distinct_tokens_upstream']}"
                       f"/{r['rotate']['tokens_written']}" if 'rotate' in r else "")
                    + (f"  redis {r['redis_cpu_us_per_req']:.1f} us/req"
                       if 'redis_cpu_us_per_req' in r else ""))
            busiest = max(r["other_cpu_pct"] for r in this_round.values())
            if (args.max_other_cpu is not None and busiest > args.max_other_cpu
                    and retries < args.max_retries):
                retries += 1
                for kind, r in this_round.items():
                    discarded[kind].append(r)
                log(f"  round {rnd + 1} discarded: other processes used {busiest:.0f}% of a core "
                    f"(repeat {retries}/{args.max_retries})")
                continue
            for kind, r in this_round.items():
                results[kind].append(r)
                if "rotate" in r:
                    rot_rounds.append(r["rotate"])
            rnd += 1
        for kind, p in proxies.items():
            if not p.server.alive():
                die(f"{kind} died during the {name} runs:\n{p.server.log_tail()}")
        if redis and not redis.server.alive():
            die(f"redis-server died during the {name} runs:\n{redis.server.log_tail()}")
        for kind, p in proxies.items():
            if p.rate_limit:
                # every request of the warm-up and the rounds (and the header check)
                stats = rate_limit_stats(p.admin("/metrics"), shared=p.rate_limit == "shared")
                extra.setdefault("rate_limit", {})[kind] = stats
                log(f"  {rate_limit_line(kind, stats)}")
        if rotator:
            extra["rotate"] = dict(
                tokens_written=sum(x["tokens_written"] for x in rot_rounds),
                tokens_expected=sum(x["tokens_expected"] for x in rot_rounds),
                expected_missing=sum(x["expected_missing"] for x in rot_rounds),
                distinct_tokens_upstream=sum(x["distinct_tokens_upstream"] for x in rot_rounds),
                unknown_tokens_upstream=sum(x["unknown_tokens_upstream"] for x in rot_rounds),
            )
    finally:
        if rotator:
            rotator.stop()
        for p in proxies.values():
            p.stop()
        if redis:
            redis.stop()
    res = dict(desc=variant["desc"], proxies={}, extra=extra)
    labels = {k: v for k, v in variant.get("labels", {}).items() if k in kinds}
    if labels:
        res["labels"] = labels
    for kind in kinds:
        res["proxies"][kind] = dict(rounds=results[kind], summary=summarize(results[kind]),
                                    idle_rss_mib=idle.get(kind), discarded_rounds=discarded[kind])
    res["ratios"] = ratios(res)
    return res


def find_problems(info, results, variants=VARIANTS):
    """What the run's numbers should be read with, and which of those fail it (exit status 1):
    `(problems, fatal)`. Fatal: every problem of `rotate`; in a `strict` variant, any error or
    non-2xx and every problem of its rate decisions (`rate_limit_problems`). A busy machine
    or a stale binary is reported, not fatal, elsewhere."""
    problems, fatal = [], []

    def add(text, is_fatal=False):
        problems.append(text)
        if is_fatal:
            fatal.append(text)

    if info.get("token_sidecar_older_than"):
        add(f"the token-sidecar binary is older than the sources "
            f"({few(info['token_sidecar_older_than'])}): it may not be this tree's build")
    for name, res in results.items():
        rotate = name == "rotate"
        strict = variants.get(name, {}).get("strict", False)
        for kind, pr in res["proxies"].items():
            errs = pr["summary"]["errors"] + sum(r["errors"] for r in pr["discarded_rounds"])
            if errs:
                add(f"{name}/{kind}: {errs} errors or non-2xx", rotate or strict)
            if pr["summary"]["other_cpu_pct_max"] > 25:
                add(f"{name}/{kind}: other processes used up to "
                    f"{pr['summary']['other_cpu_pct_max']:.0f}% of a core "
                    f"(numbers skewed; see --max-other-cpu)", rotate)
        for kind, stats in res["extra"].get("rate_limit", {}).items():
            for text in rate_limit_problems(name, kind, stats):
                add(text, True)
        x = res["extra"].get("rotate")
        if x and x["unknown_tokens_upstream"]:
            add(f"{name}: {x['unknown_tokens_upstream']} unexpected tokens upstream", rotate)
        if x and x["expected_missing"]:
            add(f"{name}: {x['expected_missing']} tokens written to the file never "
                f"reached the upstream (the proxy kept an old token)", rotate)
    return problems, fatal


def merge_swapped(res, swapped):
    """One variant measured twice, the second time with token-sidecar's and the baseline's
    binaries exchanged between their slots: the rounds of each build, from both runs.

    Round i of the first run pairs (new in slot 1, old in slot 2) and round i of the second
    (new in slot 2, old in slot 1), each measured back to back, so a slot's advantage enters
    the paired ratios once each way and cancels in their geometric mean."""
    out = dict(res, proxies=dict(res["proxies"]))
    pairs = [(SIDECAR, BASELINE), (BASELINE, SIDECAR)]
    # The reference slot (SIDECAR_GET) runs the build under test in both runs: its round i
    # was measured next to that build's round i in either.
    if SIDECAR_GET in res["proxies"] and SIDECAR_GET in swapped["proxies"]:
        pairs.append((SIDECAR_GET, SIDECAR_GET))
    for kind, other in pairs:
        mine, theirs = res["proxies"][kind], swapped["proxies"][other]
        rounds = mine["rounds"] + theirs["rounds"]
        out["proxies"][kind] = dict(mine, rounds=rounds, summary=summarize(rounds),
                                    discarded_rounds=mine["discarded_rounds"] + theirs["discarded_rounds"])
    mine = res.get("extra", {}).get("rate_limit")
    theirs = swapped.get("extra", {}).get("rate_limit")
    if mine and theirs:
        out["extra"] = dict(res["extra"], rate_limit={
            kind: {k: v + theirs[other][k] for k, v in mine[kind].items()}
            for kind, other in pairs[:2] if kind in mine and other in theirs})
    out["ratios"] = ratios(out)
    out["swapped"] = True
    return out


def print_variant(name, res):
    log(f"\n--- {name}: {res['desc']}")
    log(table(name, res))
    for k, v in res["ratios"].items():
        log(f"  {k}: req/s x{v['rps']:.2f} ({per_round(v, 'x')}), p99 x{v['p99']:.2f}, "
            f"CPU/req x{v['cpu_per_req']:.2f}{cpu_added(v, 'us')}")
    for kind, stats in res["extra"].get("rate_limit", {}).items():
        log(f"  {rate_limit_line(proxy_label(kind, res), stats)}")
    redis = redis_cpu(res)
    if redis:
        log(f"  redis-server CPU per request: " + ", ".join(
            f"{proxy_label(k, res)} {v:.1f} us" for k, v in redis.items()))
    if "rotate" in res["extra"]:
        x = res["extra"]["rotate"]
        log(f"  rotation: {x['tokens_written']} tokens written, {x['distinct_tokens_upstream']} "
            f"seen at the upstream, {x['unknown_tokens_upstream']} unknown, "
            f"{x['expected_missing']} of {x['tokens_expected']} expected missing")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=6, help="seconds per measured run (default 6)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up seconds per proxy and variant (default 3)")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated, from: {','.join(VARIANTS)} (default all)")
    ap.add_argument("--proxies", default=None,
                    help=f"comma-separated, from: {','.join(PROXIES)} (default: "
                         f"{','.join(DEFAULT_PROXIES)}, and {BASELINE} when $BASELINE_BIN is set); "
                         f"{BASELINE} is $BASELINE_BIN, another build of token-sidecar")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the upstream-direct baseline row of the get variant")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 1 round of 2 s after a 1 s warm-up")
    ap.add_argument("--out", default=str(HERE / "results" / "latest.json"), help="JSON results file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    ap.add_argument("--max-load", type=float, default=None,
                    help="before starting, wait until the 1-minute load average is below this")
    ap.add_argument("--max-wait", type=int, default=1800,
                    help="give up waiting for a quiet machine after this many seconds (default 1800)")
    ap.add_argument("--max-other-cpu", type=float, default=None, metavar="PCT",
                    help="before each round wait until processes outside the benchmark use less "
                         "than PCT%% of a core, and repeat a round in which they used more "
                         "(default: only report it, column 'other CPU')")
    ap.add_argument("--max-retries", type=int, default=10,
                    help="repeats of discarded rounds per variant (default 10)")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.rounds, args.warmup = 2, 1, 1
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.proxies is None:
        args.proxies = ",".join(DEFAULT_PROXIES + ([BASELINE] if os.environ.get("BASELINE_BIN") else []))
    args.proxies = [p.strip() for p in args.proxies.split(",") if p.strip()]
    if BASELINE in args.proxies and not os.environ.get("BASELINE_BIN"):
        ap.error(f"{BASELINE} needs $BASELINE_BIN, a token-sidecar binary to compare with")
    for v in args.variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    for p in args.proxies:
        if p not in PROXIES:
            ap.error(f"unknown proxy {p!r}; known: {', '.join(PROXIES)}")
    if args.duration < 1 or args.rounds < 1 or args.warmup < 1:
        ap.error("--duration, --rounds and --warmup must be >= 1")

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    d = tempfile.mkdtemp(prefix="proxybench-")
    os.chmod(d, 0o755)   # nginx workers may run as another user
    status = 0
    try:
        ensure_tools(required_tools(args.variants))
        nofile = raise_nofile()
        if "c1000" in args.variants and nofile < 4500:
            log(f"warning: ulimit -n is {nofile}; the c1000 variant needs about 4,500 descriptors")
        sidecar_src = sidecar_binary()
        if args.max_load is not None:
            deadline = time.monotonic() + args.max_wait
            while os.getloadavg()[0] >= args.max_load:
                if time.monotonic() > deadline:
                    die(f"load average still {os.getloadavg()[0]:.2f} after {args.max_wait}s")
                log(f"waiting for load average < {args.max_load} (now {os.getloadavg()[0]:.2f}) ...")
                time.sleep(30)
        sidecar_bin = copy_binary(sidecar_src, d)
        baseline_bin = None
        if BASELINE in args.proxies:
            src = os.environ["BASELINE_BIN"]
            if not Path(src).is_file():
                die(f"BASELINE_BIN={src} is not a file")
            baseline_bin = copy_binary(src, d, "sidecar-baseline")
        info = machine_info(sidecar_src, sidecar_bin)
        stale = newer_sources(sidecar_src) if os.environ.get("SIDECAR_BIN") else []
        if stale:
            info["token_sidecar_older_than"] = stale
            log(f"WARNING: {sidecar_src} is older than this checkout's sources "
                f"({few(stale)}): if it is meant to "
                f"be this tree's build, rebuild it (cargo build --release) or unset SIDECAR_BIN")
        log("machine:")
        for k, v in info.items():
            log(f"  {k:22s} {v}")
        log(f"settings: duration {args.duration}s, rounds {args.rounds}, warm-up {args.warmup}s, "
            f"variants {','.join(args.variants)}")
        make_certs(d)
        upstream = Upstream(d)
        upstream.check()
        started = time.monotonic()
        results = {}
        for name in args.variants:
            res = run_variant(name, VARIANTS[name], args, d, upstream, sidecar_bin, baseline_bin)
            if res is not None and baseline_bin and BASELINE in res["proxies"]:
                # The same build in both slots is not level at c1000 (the second slot measured
                # about 5 % faster): each build runs in each slot, and the rounds are pooled.
                log(f"\n=== {name}: again with the two builds in each other's slot")
                swapped = run_variant(name, VARIANTS[name], args, d, upstream, baseline_bin,
                                      sidecar_bin, reference_bin=sidecar_bin)
                res = merge_swapped(res, swapped)
            if res is None:
                continue
            res["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
            results[name] = res
            print_variant(name, res)
        info["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        info["wall_seconds"] = round(time.monotonic() - started, 1)

        log("\n================ summary (medians over rounds) ================")
        for name, res in results.items():
            print_variant(name, res)
        v = verdicts(results)
        if v:
            log("\nverdicts, req/s (95% confidence interval of the paired per-round ratio):")
            for line in v:
                log(f"  {line}")
        idle = [res["proxies"][SIDECAR]["idle_rss_mib"] for res in results.values()
                if SIDECAR in res["proxies"] and res["proxies"][SIDECAR].get("idle_rss_mib")]
        if idle:
            log(f"\ntoken-sidecar idle RSS before load: {min(idle):.1f}-{max(idle):.1f} MiB")
        log(f"load average: start {info['loadavg_start']}, end {info['loadavg_end']}; "
            f"wall {info['wall_seconds']:.0f}s")

        problems, fatal = find_problems(info, results)
        if problems:
            log("\nPROBLEMS:\n  " + "\n  ".join(problems))
        if fatal:
            log(f"\nFAILED: {len(fatal)} of these problems fail the run (exit status 1)")
            status = 1

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        settings = dict(duration=args.duration, rounds=args.rounds, warmup=args.warmup,
                        quick=args.quick, variants={n: VARIANTS[n] for n in results})
        doc = dict(machine=info, settings=settings, results=results, problems=problems)
        out.write_text(json.dumps(no_nan(doc), indent=2, default=str) + "\n")
        md = out.with_suffix(".md")
        md.write_text(markdown(info, settings, results))
        log(f"\nresults written to {out} and {md}")
    except BenchError as e:
        log(f"\nBENCHMARK FAILED: {e}")
        status = 2
    except KeyboardInterrupt as e:
        log(f"\ninterrupted ({e or 'SIGINT'}); stopping servers")
        status = 130
    finally:
        stop_all()
        if args.keep or status == 2:
            log(f"work directory kept: {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
