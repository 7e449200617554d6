#!/usr/bin/env bash
# Everything that needs the GPU machine, in one call: the carried wheels, the
# gpu-marked tests (plus the torch format tests on that machine's torch), and
# the CUDA benchmarks. Logs and JSON go to $OUT; copy torch_cuda.json and
# vault_cuda.json into benchmarks/results/ and run benchmarks/render_readme.py.
set -uo pipefail
OUT=${OUT:-/tmp/mvault-gpu-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src:$PWD
else
    export PYTHONPATH=$PWD/src:$PWD
fi
export PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))"
    nproc; free -g | head -2
} 2>&1 | tee "$OUT/machine.txt"
timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -rs -p no:cacheprovider tests/gpu tests/formats/torch "$@" 2>&1 | tee "$OUT/gpu-tests.log" | tail -40
timeout "${BENCH_TIMEOUT:-300}" python3 benchmarks/torch_load_bench.py --device cuda --size-gb "${SIZE_GB:-2}" --runs "${RUNS:-5}" --out "$OUT/torch_cuda.json" 2>&1 | tee "$OUT/bench-cuda.log" | tail -40
timeout "${BENCH_TIMEOUT:-300}" python3 benchmarks/vault_bench.py --device cuda --size-gb "${SIZE_GB:-2}" --runs "${RUNS:-5}" --out "$OUT/vault_cuda.json" 2>&1 | tee "$OUT/bench-vault-cuda.log" | tail -30
