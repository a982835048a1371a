#!/usr/bin/env bash
# Unpack Debian's prometheus package into the cache outside the repository (no
# service is installed or started: tests start their own server on loopback).
# Prints the directory holding the `prometheus` binary.
set -euo pipefail
CACHE="${QORCH_CACHE:-$HOME/.cache/qorch}"
DIR="$CACHE/prometheus"
if [ -x "$DIR/usr/bin/prometheus" ]; then
  echo "$DIR/usr/bin"
  exit 0
fi
mkdir -p "$DIR" "$CACHE/debs"
cd "$CACHE/debs"
if ! ls prometheus_*.deb >/dev/null 2>&1; then
  apt-get download prometheus >&2 || { apt-get update >&2 && apt-get download prometheus >&2; }
fi
dpkg -x prometheus_*.deb "$DIR"
"$DIR/usr/bin/prometheus" --version >&2
echo "$DIR/usr/bin"
