#!/usr/bin/env bash
# Everything a fresh machine needs for `make test` and `make demo`:
#  - a virtual environment in .venv with the locked dependencies,
#  - the control-plane binaries built from Go modules (cached outside the repo),
#  - Prometheus from Debian's package (cached outside the repo),
#  - helm from the Go module proxy (cached outside the repo), for the chart tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.qorch-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -c constraints.txt -e '.[dev]'
  .venv/bin/pip check
  touch "$stamp"
fi
hack/build-control-plane.sh >/dev/null
hack/install-prometheus.sh >/dev/null
hack/install-helm.sh >/dev/null
echo "setup done: .venv ready, control plane in $(hack/build-control-plane.sh), prometheus in $(hack/install-prometheus.sh), helm in $(hack/install-helm.sh)"
