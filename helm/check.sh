#!/usr/bin/env bash
# Checks the Helm chart helm/s3-gateway: helm lint --strict, helm template of several value sets,
# every manifest against the Kubernetes schemas, the rendered gateway.toml against the gateway's
# config, and docs/grafana-dashboard.json. See helm/check.py for what exactly.
#
#   helm/check.sh VENV_DIR
#
# Installs into the virtualenv VENV_DIR (created if missing), unless already there:
#   helm-python-sdk   Helm v4 (its Go SDK as a shared library, libhelm_c; the wheel has no `helm`
#                     executable, so lint and template go through its Python API, which runs the
#                     same Helm code as `helm lint --strict` and `helm template`)
#   kubernetes-validate  the Kubernetes OpenAPI schemas of every release it supports, offline
# After that install everything runs offline. Quiet on success; exit status 1 on any failure.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 VENV_DIR" >&2
    exit 2
fi
VENV="$1"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
PACKAGES=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0)

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" - "${PACKAGES[@]}" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    if version(name) != want:
        sys.exit(1)
import helm_python, kubernetes_validate  # noqa: E401,F401
PY
then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PACKAGES[@]}"
fi

exec "$VENV/bin/python" "$HERE/check.py"
