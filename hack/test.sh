#!/usr/bin/env bash
# The test command: set up, build the cluster binaries (cached), run every suite.
# The pytest fixtures start the local control plane and stop it afterwards.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source hack/setup.sh
export PATH="$VENV/bin:$PATH"
started=$(date +%s)

corral cluster build
echo "[test] lint and types" >&2
ruff check operator tests bench
mypy
echo "[test] pytest" >&2
set +e
pytest -p no:cacheprovider "$@"
code=$?
set -e
echo "[test] finished in $(( $(date +%s) - started ))s" >&2
# Exit code 5 means pytest collected nothing (e.g. a filter matched no test): that is
# not a failure of the code under test, but say so loudly.
if [ "$code" -eq 5 ]; then
  echo "[test] warning: no tests were collected" >&2
  exit 0
fi
exit "$code"
