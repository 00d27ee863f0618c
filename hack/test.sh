#!/usr/bin/env bash
# The test command: set up, build the cluster binaries (cached), run every suite.
# The pytest fixtures start the local control plane and stop it afterwards.
#
# With no arguments: unit, runner and integration tests, then the e2e suite on a real
# node (containerd + kubelet on this machine, see docs/real-node.md) in a second pytest
# run with the chaos tests beside it in a third; CORRAL_E2E=0 skips the e2e part (the chaos
# tests then run after the others). With arguments, one pytest run with them.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source hack/setup.sh
export PATH="$VENV/bin:$PATH"
started=$(date +%s)

corral cluster build

# A run that was killed (a CI timeout, a closed terminal) leaves its clusters up with its
# objects in them, and the fixtures would reuse them. The e2e cluster is the tests' own:
# start it clean unless asked to keep it. The default one may be a developer's `corral up`:
# only CI starts that one clean too.
if [ -z "${CORRAL_KEEP_CLUSTER:-}" ]; then
  e2e_state="${CORRAL_E2E_STATE_DIR:-$(dirname "$(python -c 'from corral.cluster.paths import state_dir; print(state_dir())')")/e2e}"
  CORRAL_STATE_DIR="$e2e_state" corral cluster down >/dev/null
  # The chaos tests' own cluster (tests/chaos/conftest.py): a killed run may have left it
  # with a component down or restarted with other flags.
  chaos_state="${CORRAL_CHAOS_STATE_DIR:-$(python -c 'from corral.cluster.paths import state_dir; d = state_dir(); print(d.with_name(d.name + "-chaos"))')}"
  CORRAL_STATE_DIR="$chaos_state" corral cluster down >/dev/null
  if [ -n "${CI:-}" ]; then
    corral cluster down >/dev/null
  fi
fi
# The real node's build (Debian packages, kubelet and friends from their Go modules, the
# images) takes minutes on a cold machine and only the e2e run needs it: it runs in the
# background while lint and the other suites run, and the e2e run waits for it.
node_build_pid=""
node_build_log=""
if [ "$#" -eq 0 ] && [ "${CORRAL_E2E:-1}" != "0" ]; then
  node_build_log="$(mktemp -t corral-node-build.XXXXXX.log)"
  echo "[test] e2e: building the real node in the background (log: $node_build_log)" >&2
  ( bash hack/node-deps.sh && corral cluster build --real-node ) >"$node_build_log" 2>&1 &
  node_build_pid=$!
elif [ "$#" -gt 0 ] && [ "${CORRAL_E2E:-}" = "1" ]; then
  # One pytest run that asks for the e2e tests: the node is built first, so a cold build
  # (minutes) does not run inside the first test's timeout (a killed build was the result).
  bash hack/node-deps.sh
  corral cluster build --real-node
fi

echo "[test] lint and types" >&2
ruff check operator tests bench hack
ruff format --check operator tests bench hack
mypy

# pytest exit 5 means it collected nothing (e.g. a filter matched no test): not a failure
# of the code under test, but say so loudly.
run_pytest() {
  set +e
  pytest -p no:cacheprovider "$@"
  local code=$?
  set -e
  if [ "$code" -eq 5 ]; then
    echo "[test] warning: no tests were collected by: pytest $*" >&2
    code=0
  fi
  return "$code"
}

# The chaos suite, whichever way it is run below (beside the e2e suite, or after the others).
chaos_args=(-m "not e2e" --durations=6 tests/chaos)
# Its control plane prefers ports of its own, away from the defaults (6443, ...): it stops
# and restarts its API server on the same port, and a cluster starting meanwhile beside it
# (the e2e suite's `corral up`) took the freed 6443 once, failing the restart.
chaos_port_base="${CORRAL_CHAOS_PORT_BASE:-21000}"

code=0
if [ "$#" -gt 0 ]; then
  echo "[test] pytest $*" >&2
  run_pytest "$@" || code=$?
else
  echo "[test] pytest (all but e2e and chaos)" >&2
  # The slowest tests in every full run's log: where the cold run's 60 minutes go.
  run_pytest -m "not e2e" --ignore=tests/chaos --durations=15 || code=$?
  if [ "${CORRAL_E2E:-1}" != "0" ]; then
    # The chaos tests (a control plane of their own, on free ports) run beside the e2e
    # suite (its own cluster and real node): both spend most of their time waiting on
    # faults they made (a component down for a minute, a node gone), and one after the
    # other they were 27 of a cold run's 60 minutes. Their log is printed when both end.
    chaos_log="$(mktemp -t corral-chaos.XXXXXX.log)"
    echo "[test] chaos: running beside the e2e suite (log: $chaos_log, printed below when done)" >&2
    ( chaos_started=$(date +%s)
      chaos_code=0
      CORRAL_CLUSTER_PORT_BASE="$chaos_port_base" run_pytest "${chaos_args[@]}" || chaos_code=$?
      echo "[test] chaos finished in $(( $(date +%s) - chaos_started ))s"
      exit "$chaos_code" ) >"$chaos_log" 2>&1 &
    chaos_pid=$!
    e2e_started=$(date +%s)
    echo "[test] e2e: waiting for the real node's build" >&2
    e2e_code=0
    if ! wait "$node_build_pid"; then
      cat "$node_build_log" >&2
      echo "[test] e2e: the real node's build failed (above)" >&2
      e2e_code=1
    else
      tail -n 5 "$node_build_log" >&2
      echo "[test] e2e: build waited for $(( $(date +%s) - e2e_started ))s; pytest tests/e2e" >&2
      CORRAL_E2E=1 run_pytest -m e2e --durations=10 tests/e2e || e2e_code=$?
    fi
    echo "[test] e2e finished in $(( $(date +%s) - e2e_started ))s" >&2
    chaos_code=0
    wait "$chaos_pid" || chaos_code=$?
    echo "[test] chaos (beside e2e):" >&2
    cat "$chaos_log" >&2
    for part in "$chaos_code" "$e2e_code"; do
      if [ "$code" -eq 0 ]; then
        code=$part
      fi
    done
  else
    echo "[test] pytest tests/chaos" >&2
    CORRAL_CLUSTER_PORT_BASE="$chaos_port_base" run_pytest "${chaos_args[@]}" || code=$?
  fi
fi
echo "[test] finished in $(( $(date +%s) - started ))s" >&2
exit "$code"
