#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine, then runs it, then runs
# Dask's own test files on fanflow's schedulers (scripts/dask_suite/compare.py).
# System packages are installed only when missing (apt-get needs root).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v dot >/dev/null 2>&1 || need+=(graphviz)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e ".[all]" -c scripts/dask_suite/constraints.txt
python3 -m pytest -q "$@"

# Dask's own test files on fanflow's schedulers, against their outcomes on Dask's (docs/dask.md):
# fails when a test passes on Dask and fails on fanflow. FANFLOW_SKIP_DASK_SUITE=1 skips it.
if [ "${FANFLOW_SKIP_DASK_SUITE:-0}" != "1" ]; then
  python3 scripts/dask_suite/compare.py
fi
