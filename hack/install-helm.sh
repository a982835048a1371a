#!/usr/bin/env bash
# Build helm from the Go module proxy into the cache outside the repository (the chart
# tests render charts/qorch with it). Prints the directory holding `helm`.
set -euo pipefail
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE="${QORCH_CACHE:-$HOME/.cache/qorch}"
BIN="$CACHE/bin/helm-$HELM_VERSION"
if [ ! -x "$BIN/helm" ]; then
  mkdir -p "$BIN"
  echo "[install-helm] building helm $HELM_VERSION" >&2
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
fi
echo "$BIN"
