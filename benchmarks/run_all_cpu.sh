#!/usr/bin/env bash
# Every CPU benchmark at the README's sizes, one after another, then the
# README's tables rendered from the results files they wrote. Run it on an
# otherwise idle machine: each results file records the load it saw, and a run
# that started on a busy machine says CONTENDED in its table.
#
#     make bench-setup               # once: MLflow in its own venv
#     bash benchmarks/run_all_cpu.sh
#
# PYTHON and MLFLOW_PYTHON override the interpreters; WAIT_IDLE=0 starts at
# once instead of waiting (up to 10 minutes) for the load average to drop.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
MLFLOW_PYTHON=${MLFLOW_PYTHON:-benchmarks/.mlflow-venv/bin/python}
export PYTHONPATH=$PWD/src:$PWD
export MLFLOW_PYTHON
if [ ! -x "$MLFLOW_PYTHON" ]; then
    echo "no MLflow interpreter at $MLFLOW_PYTHON: run 'make bench-setup' first" >&2
    exit 1
fi

# Start each benchmark only once the machine has calmed down (load < 0.5 per CPU).
wait_idle() {
    [ "${WAIT_IDLE:-1}" = 1 ] || return 0
    local cpus i
    cpus=$(nproc)
    for i in $(seq 60); do
        if awk -v c="$cpus" '{ exit !($1 < 0.5 * c) }' /proc/loadavg; then return 0; fi
        [ "$i" = 1 ] && echo "waiting for the load average ($(cut -d' ' -f1 /proc/loadavg)) to drop ..."
        sleep 10
    done
    echo "the machine stayed busy: the next run will be marked CONTENDED" >&2
}

run() {
    wait_idle
    echo "== $*"
    "$PY" "$@"
}

run benchmarks/bundle_bench.py --size 1GiB --runs 9
run benchmarks/torch_load_bench.py --device cpu --size-gb 0.5 --runs 7
run benchmarks/vault_bench.py --size-gb 0.5 --runs 5 --mlflow-python "$MLFLOW_PYTHON"
run benchmarks/storage_bench.py --size-mib 1024 --runs 5 --weed-dir /dev/shm/mvb-weed
run benchmarks/registry_bench.py --mlflow-python "$MLFLOW_PYTHON"
run benchmarks/oci_bench.py --size-mb 1024 --runs 5
run benchmarks/startup.py --runs 7
"$PY" benchmarks/render_readme.py
