#!/usr/bin/env bash
# Shared setup for every entry point: a project venv with Corral and its dev tools.
# Idempotent and quick when nothing changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CORRAL_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: Corral needs Python 3.11 or newer ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
if ! command -v go >/dev/null 2>&1; then
  echo "error: the Go toolchain is needed to build the local cluster from upstream Go modules;" >&2
  echo "       install Go 1.24 or newer (e.g. apt-get install golang) and run again" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.corral-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] \
   || [ "$ROOT/images/constraints.txt" -nt "$stamp" ]; then
  echo "[setup] installing corral and its dev tools into $VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # The images' exact pins apply here too: tests and benchmarks run against what ships.
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[dev]" -c "$ROOT/images/constraints.txt"
  touch "$stamp"
fi

# The cluster binaries, built once into the cache (~/.cache/corral/bin, or
# $CORRAL_CACHE_DIR; quick when cached), and the project's kubectl and helm linked into the
# venv, so that `source .venv/bin/activate` puts them on PATH. A file of those names that
# is not a link (someone's own) is left alone; a link is re-pointed after a version bump.
"$VENV/bin/corral" cluster build
for tool in kubectl helm; do
  target="$("$VENV/bin/python" -c 'import sys; from corral.cluster.build import binary_path
print(binary_path(sys.argv[1]))' "$tool")"
  link="$VENV/bin/$tool"
  if [ -x "$target" ] && { [ -L "$link" ] || [ ! -e "$link" ]; } \
     && [ "$(readlink "$link" 2>/dev/null)" != "$target" ]; then
    ln -sfn "$target" "$link"
  fi
done
