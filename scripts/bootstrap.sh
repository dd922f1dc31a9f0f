# Sourced by run.sh and test.sh: makes `uv` available and the environment match uv.lock.
set -euo pipefail
UV_VERSION=0.13.9
if ! python3 -m uv --version 2>/dev/null | grep -q "uv $UV_VERSION"; then
  echo "installing uv $UV_VERSION" >&2
  python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
uv() { python3 -m uv "$@"; }
export UV_PYTHON_DOWNLOADS=never
uv sync --locked --quiet
