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
# Where PYTHONDONTWRITEBYTECODE is set (this machine sets it), no process ever caches
# bytecode and each one compiles every module it imports from source: ~28 s of imports
# for an `nbship build` step, ~15 s compiled. `uv sync` installs uncompiled, so compile
# the venv's packages once per lock (a stamp says it is done; ~85 s on two cores).
stamp=".venv/.bytecode-$(sha256sum uv.lock | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  echo "compiling the environment's bytecode (once per uv.lock)" >&2
  # a package's stray Python-2 file must not stop the rest
  .venv/bin/python -m compileall -q -j 0 .venv/lib/python3*/site-packages >/dev/null 2>&1 || true
  rm -f .venv/.bytecode-*
  touch "$stamp"
fi
