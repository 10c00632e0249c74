#!/usr/bin/env python3
"""What the GitHub Actions workflows must keep doing, beyond what a linter knows.

    python3 scripts/check_workflows.py [--self-test]

Checks, offline, on .github/workflows/ci.yml and release.yml (and the Dockerfile):

  - ci.yml runs on push and pull_request, and its test job runs the project's test command,
    the very command .ci/run executes (./scripts/test.sh, as in the README), on ubuntu-latest,
    within 90 minutes, with ~/.cargo and target/ cached, and a read-only token;
  - every action is pinned to a full commit SHA with its version in a comment, and one action
    is at one SHA across the workflows;
  - every job has a timeout and explicit permissions (release.yml grants nothing at the top);
    a job with `id-token: write` signs with cosign, and only such jobs have it;
  - release.yml builds the x86_64 and aarch64 musl binaries, the linux/amd64 + linux/arm64
    image with an SBOM and max provenance, signs the image and the chart, and pushes the chart
    to oci://ghcr.io/OWNER/charts; neither it nor the Dockerfile builds with a feature (the
    `dev` demo stays out of what ships), and both build with --locked.

One line per check, then "N passed, M failed"; exit 1 on failure. --self-test breaks copies
of the files in ways the checks must catch (another test command, an unpinned action, a build
with --features dev, a missing timeout) and fails if one goes unnoticed.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SHA_PIN = re.compile(r"^\s*(?:-\s+)?uses:\s*([^@\s#]+)@([^\s#]+)\s*(?:#\s*(\S+))?")
FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
VERSION_COMMENT = re.compile(r"^v\d+(\.\d+)*$")


def load(text: str) -> dict:
    wf = yaml.safe_load(text)
    # YAML 1.1 reads the key `on` as the boolean true.
    if True in wf and "on" not in wf:
        wf["on"] = wf.pop(True)
    return wf


def ci_run_command(ci_run: str) -> str | None:
    """The command .ci/run executes: its `exec` line."""
    m = re.search(r"^exec\s+(.+?)\s*$", ci_run, re.M)
    return m.group(1) if m else None


def runs(job: dict) -> list[str]:
    return [s["run"].strip() for s in job.get("steps") or [] if "run" in s]


def uses(job: dict) -> list[dict]:
    return [s for s in job.get("steps") or [] if "uses" in s]


def step_using(job: dict, action: str) -> dict | None:
    return next((s for s in uses(job) if s["uses"].split("@")[0] == action), None)


class Checks:
    def __init__(self, quiet: bool = False) -> None:
        self.passed = 0
        self.failed: list[str] = []
        self.quiet = quiet

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
        else:
            self.failed.append(name)
        if not self.quiet:
            print(f"{'ok  ' if ok else 'FAIL'} {name}" + ("" if ok or not detail else f": {detail}"))
        return ok


def check_ci(ck: Checks, ci: dict, ci_run: str) -> None:
    want = ci_run_command(ci_run)
    ck.check(".ci/run executes one command (exec ...)", want is not None)
    triggers = ci.get("on") or {}
    ck.check("ci.yml runs on push and pull_request", "push" in triggers and "pull_request" in triggers,
             f"on: {list(triggers)}")
    ck.check("ci.yml's token is read-only (permissions: contents: read)",
             ci.get("permissions") == {"contents": "read"}, str(ci.get("permissions")))
    test = (ci.get("jobs") or {}).get("test")
    if not ck.check("ci.yml has a job `test`", isinstance(test, dict)):
        return
    ck.check(f"ci.yml's test job runs {want}, the command of .ci/run",
             want is not None and want in runs(test), f"its run steps: {runs(test)}")
    ck.check("ci.yml's test job runs on ubuntu-latest", test.get("runs-on") == "ubuntu-latest",
             str(test.get("runs-on")))
    ck.check("ci.yml's test job times out after 90 minutes", test.get("timeout-minutes") == 90,
             str(test.get("timeout-minutes")))
    cache = step_using(test, "Swatinem/rust-cache") or step_using(test, "actions/cache")
    cached = ""
    if cache is not None:
        w = cache.get("with") or {}
        cached = str(w.get("path", "")) + str(w.get("workspaces", ". -> target"))
    ck.check("ci.yml's test job caches ~/.cargo and target/ (rust-cache or actions/cache)",
             cache is not None and "target" in cached
             and (cache["uses"].startswith("Swatinem/rust-cache") or "~/.cargo" in cached), cached)


def check_pins(ck: Checks, texts: dict[str, str]) -> None:
    seen: dict[str, set[tuple[str, str | None]]] = {}
    bad = []
    for name, text in texts.items():
        for n, line in enumerate(text.splitlines(), 1):
            m = SHA_PIN.match(line)
            if not m:
                continue
            action, ref, comment = m.groups()
            if action.startswith("./") or action.startswith("docker://"):
                continue
            seen.setdefault(action, set()).add((ref, comment))
            if not FULL_SHA.match(ref) or not comment or not VERSION_COMMENT.match(comment):
                bad.append(f"{name}:{n}: {action}@{ref} # {comment or '(no version)'}")
    ck.check("every action is pinned to a full commit SHA, its version in a comment", not bad, "; ".join(bad))
    split = {a: sorted(f"{r} # {c}" for r, c in v) for a, v in seen.items() if len(v) > 1}
    ck.check("each action is at one SHA (and version) in every workflow", not split, str(split))


def check_jobs(ck: Checks, workflows: dict[str, dict]) -> None:
    no_timeout, no_perms, idtoken_unsigned, signers_without = [], [], [], []
    for name, wf in workflows.items():
        for job_name, job in (wf.get("jobs") or {}).items():
            where = f"{name}:{job_name}"
            if "timeout-minutes" not in job:
                no_timeout.append(where)
            perms = job.get("permissions", wf.get("permissions"))
            if perms is None:
                no_perms.append(where)
            signs = any("cosign sign" in r for r in runs(job))
            if isinstance(perms, dict) and perms.get("id-token") == "write" and not signs:
                idtoken_unsigned.append(where)
            if signs and not (isinstance(perms, dict) and perms.get("id-token") == "write"):
                signers_without.append(where)
    ck.check("every job has a timeout-minutes", not no_timeout, str(no_timeout))
    ck.check("every job has explicit permissions (its own or the workflow's)", not no_perms, str(no_perms))
    ck.check("only jobs that sign with cosign get id-token: write", not idtoken_unsigned, str(idtoken_unsigned))
    ck.check("every job that signs with cosign has id-token: write (keyless)", not signers_without,
             str(signers_without))


def check_release(ck: Checks, rel: dict, rel_text: str, dockerfile: str) -> None:
    triggers = rel.get("on") or {}
    tags = ((triggers.get("push") or {}).get("tags") or []) if isinstance(triggers, dict) else []
    ck.check("release.yml runs on tags v*", list(triggers) == ["push"] and tags == ["v*"], str(triggers))
    ck.check("release.yml grants nothing at the top (permissions: {})", rel.get("permissions") == {},
             str(rel.get("permissions")))
    jobs = rel.get("jobs") or {}
    ck.check("release.yml: every job asks for its own permissions",
             all("permissions" in j for j in jobs.values()),
             str([n for n, j in jobs.items() if "permissions" not in j]))

    targets = set()
    for job in jobs.values():
        targets |= set(((job.get("strategy") or {}).get("matrix") or {}).get("target") or [])
    ck.check("release.yml builds the x86_64 and aarch64 musl binaries",
             {"x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"} <= targets, str(sorted(targets)))
    builds = [line for r in (r for j in jobs.values() for r in runs(j)) for line in r.splitlines()
              if re.search(r"\bcargo (zig)?build\b", line)]
    ck.check("release.yml's cargo builds use --locked and --release",
             bool(builds) and all("--locked" in b and "--release" in b for b in builds), str(builds))

    push = [s for j in jobs.values() for s in uses(j) if s["uses"].startswith("docker/build-push-action@")]
    w = (push[0].get("with") or {}) if len(push) == 1 else {}
    ck.check("release.yml builds one image with docker/build-push-action", len(push) == 1, f"{len(push)} steps")
    ck.check("the image is linux/amd64 + linux/arm64",
             sorted(p.strip() for p in str(w.get("platforms", "")).split(",")) == ["linux/amd64", "linux/arm64"],
             str(w.get("platforms")))
    ck.check("the image is pushed with an SBOM and max provenance",
             w.get("push") is True and w.get("sbom") is True and w.get("provenance") == "mode=max",
             f"push {w.get('push')}, sbom {w.get('sbom')}, provenance {w.get('provenance')}")
    ck.check("the image is signed by digest (cosign sign --yes IMAGE@DIGEST)",
             re.search(r'cosign sign --yes "\$IMAGE@\$DIGEST"', rel_text) is not None)
    ck.check("the chart is pushed to oci://ghcr.io/OWNER/charts and signed",
             'oci://ghcr.io/${GITHUB_REPOSITORY_OWNER,,}/charts' in rel_text
             and re.search(r'cosign sign --yes "\$CHART@\$DIGEST"', rel_text) is not None)
    ck.check("the chart's version and appVersion come from the tag",
             re.search(r'helm package charts/token-sidecar --version "\$VERSION" --app-version "\$VERSION"',
                       rel_text) is not None)

    ck.check("release.yml builds with no feature (no `dev` demo in what ships)",
             "--features" not in rel_text and "--all-features" not in rel_text)
    cargo_lines = [line for line in dockerfile.splitlines() if re.search(r"\bcargo build\b", line)]
    ck.check("the Dockerfile builds with --locked, --release and no feature",
             bool(cargo_lines) and all("--locked" in c and "--release" in c and "--features" not in c
                                       and "--all-features" not in c for c in cargo_lines), str(cargo_lines))


def run_all(ck: Checks, files: dict[str, str]) -> None:
    ci, rel = load(files["ci.yml"]), load(files["release.yml"])
    check_ci(ck, ci, files[".ci/run"])
    check_pins(ck, {"ci.yml": files["ci.yml"], "release.yml": files["release.yml"]})
    check_jobs(ck, {"ci.yml": ci, "release.yml": rel})
    check_release(ck, rel, files["release.yml"], files["Dockerfile"])


def read_files() -> dict[str, str]:
    return {
        "ci.yml": (ROOT / ".github/workflows/ci.yml").read_text(),
        "release.yml": (ROOT / ".github/workflows/release.yml").read_text(),
        ".ci/run": (ROOT / ".ci/run").read_text(),
        "Dockerfile": (ROOT / "Dockerfile").read_text(),
    }


def self_test(files: dict[str, str]) -> int:
    """Each mutation must fail at least one check."""
    def drop_timeout(text: str) -> str:
        return re.sub(r"^    timeout-minutes: 90\n", "", text, count=1, flags=re.M)

    mutations = {
        "ci.yml runs another test command": ("ci.yml", lambda t: t.replace("run: ./scripts/test.sh", "run: cargo test")),
        ".ci/run runs another command": (".ci/run", lambda t: t.replace("exec ./scripts/test.sh", "exec cargo test")),
        "an action pinned to a tag": ("release.yml", lambda t: re.sub(
            r"actions/checkout@[0-9a-f]{40} # (v[\d.]+)", r"actions/checkout@\1", t, count=1)),
        "an action without its version comment": ("ci.yml", lambda t: re.sub(
            r"(Swatinem/rust-cache@[0-9a-f]{40}) # v[\d.]+", r"\1", t, count=1)),
        "a release build with --features dev": ("release.yml", lambda t: t.replace(
            "cargo zigbuild --release --locked", "cargo zigbuild --release --locked --features dev", 1)),
        "a Dockerfile build with --features dev": ("Dockerfile", lambda t: t.replace(
            "cargo build --release --locked", "cargo build --release --locked --features dev", 1)),
        "a Dockerfile build without --locked": ("Dockerfile", lambda t: t.replace(
            "cargo build --release --locked", "cargo build --release", 1)),
        "the test job without its timeout": ("ci.yml", drop_timeout),
        "an image without provenance": ("release.yml", lambda t: t.replace("provenance: mode=max", "provenance: false")),
        "a single-platform image": ("release.yml", lambda t: t.replace(
            "platforms: linux/amd64,linux/arm64", "platforms: linux/amd64")),
    }
    unnoticed = []
    for what, (name, mutate) in mutations.items():
        broken = copy.copy(files)
        broken[name] = mutate(files[name])
        if broken[name] == files[name]:
            unnoticed.append(f"{what} (the mutation changed nothing: update the self-test)")
            continue
        ck = Checks(quiet=True)
        try:
            run_all(ck, broken)
        except Exception as e:  # a broken file may not even parse: that is noticed too
            print(f"ok   self-test: {what}: {type(e).__name__}")
            continue
        if ck.failed:
            print(f"ok   self-test: {what}: caught by \"{ck.failed[0]}\"")
        else:
            unnoticed.append(what)
    for what in unnoticed:
        print(f"FAIL self-test: {what}: went unnoticed")
    return len(mutations) - len(unnoticed), len(unnoticed)


def main(argv: list[str]) -> int:
    files = read_files()
    ck = Checks()
    run_all(ck, files)
    passed, failed = ck.passed, len(ck.failed)
    if "--self-test" in argv[1:]:
        p, f = self_test(files)
        passed, failed = passed + p, failed + f
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
