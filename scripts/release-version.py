#!/usr/bin/env python3
"""The version a release tag stands for, and whether the repository agrees with it.

    python3 scripts/release-version.py [TAG]

TAG (e.g. v1.2.0, v1.3.0-rc.1; default: "v" + Cargo.toml's version) must be "v" followed by a
SemVer version, and that version must be the one the repository ships:

  Cargo.toml                       [package] version (what `token-sidecar --version` prints)
  charts/token-sidecar/Chart.yaml  appVersion (the image tag the chart deploys by default)
  deploy/base/kustomization.yaml   newTag of the token-sidecar image

Prints `version=X` and `prerelease=true|false` (a version with a pre-release part, 1.3.0-rc.1,
is a pre-release: no `latest` image tag, a GitHub pre-release), the lines
.github/workflows/release.yml appends to $GITHUB_OUTPUT. On a mismatch it names every file to
bump and exits 1. The test command runs it without TAG, so that main stays releasable.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?$")


def shipped_versions(root: Path) -> dict[str, str]:
    """Where the repository names the version it ships, and what it says there."""
    cargo = tomllib.loads((root / "Cargo.toml").read_text())["package"]["version"]
    chart = yaml.safe_load((root / "charts/token-sidecar/Chart.yaml").read_text())
    kustomization = yaml.safe_load((root / "deploy/base/kustomization.yaml").read_text())
    new_tag = next((str(i.get("newTag")) for i in kustomization.get("images") or []
                    if i.get("name") == "token-sidecar"), "(no token-sidecar image)")
    return {
        "Cargo.toml: [package] version": str(cargo),
        "charts/token-sidecar/Chart.yaml: appVersion": str(chart.get("appVersion")),
        "deploy/base/kustomization.yaml: newTag of token-sidecar": new_tag,
    }


def problems(tag: str, versions: dict[str, str]) -> list[str]:
    if not tag.startswith("v") or not SEMVER.match(tag[1:]):
        return [f"tag {tag!r} is not v + a SemVer version (v1.2.0, v1.3.0-rc.1)"]
    out = []
    version = tag[1:]
    for where, found in versions.items():
        if found != version:
            out.append(f"{where} is {found!r}, not {version!r}")
    return out


def main(argv: list[str]) -> int:
    if len(argv) > 2 or (len(argv) == 2 and argv[1].startswith("-")):
        print(__doc__, file=sys.stderr)
        return 64
    versions = shipped_versions(ROOT)
    tag = argv[1] if len(argv) == 2 else "v" + versions["Cargo.toml: [package] version"]
    found = problems(tag, versions)
    if found:
        print(f"release-version: {tag} does not match the repository:", file=sys.stderr)
        for p in found:
            print(f"  {p}", file=sys.stderr)
        if tag.startswith("v") and SEMVER.match(tag[1:]):
            print("  set the version in each of these files (docs/releasing.md), then tag", file=sys.stderr)
        return 1
    version = tag[1:]
    print(f"version={version}")
    print(f"prerelease={'true' if '-' in version else 'false'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
