#!/usr/bin/env bash
# Prints the path of a promtool (Prometheus' rule checker), installing it when there is none:
# $PROMTOOL when set, else `promtool` on the PATH, else the promtool of Debian's `prometheus`
# package, extracted into ${XDG_CACHE_HOME:-~/.cache}/token-sidecar-promtool/VERSION/ (the .deb
# is fetched with `apt-get download`, no root needed; the package itself is not installed,
# which would also install, and on a host with systemd start, a Prometheus server on :9090).
# Says on stderr what it installs; fails (never skips) when it cannot.
set -euo pipefail

die() { echo "promtool.sh: $*" >&2; exit 1; }

if [ -n "${PROMTOOL:-}" ]; then
  [ -x "$PROMTOOL" ] || die "PROMTOOL=$PROMTOOL is not an executable"
  echo "$PROMTOOL"
  exit 0
fi
if command -v promtool >/dev/null 2>&1; then
  command -v promtool
  exit 0
fi
command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 \
  || die "promtool is required: install Prometheus' promtool (Debian/Ubuntu: the prometheus package), or set PROMTOOL"

candidate() { apt-cache policy prometheus 2>/dev/null | awk '/Candidate:/ {print $2}'; }
version=$(candidate)
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "== apt-get update (to find Debian's prometheus package, for promtool)" >&2
  $sudo apt-get update -qq >&2
  version=$(candidate)
  [ -n "$version" ] && [ "$version" != "(none)" ] || die "no prometheus package in the apt sources"
fi

dir=${XDG_CACHE_HOME:-$HOME/.cache}/token-sidecar-promtool/$version
if [ ! -x "$dir/promtool" ]; then
  echo "== installing promtool $version: apt-get download prometheus, promtool extracted into $dir" >&2
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/promtool.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User="$(id -un)" "prometheus=$version" >&2)
  dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool
  mkdir -p "$dir"
  mv "$tmp/usr/bin/promtool" "$dir/promtool"
fi
"$dir/promtool" --version >/dev/null 2>&1 || die "$dir/promtool does not run"
echo "$dir/promtool"
