#!/usr/bin/env bash
# The main command: set up, then run Corral on the embedded local cluster
# (built from upstream Go modules on first use, cached outside the repo).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/hack/setup.sh"
exec "$VENV/bin/corral" up "$@"
