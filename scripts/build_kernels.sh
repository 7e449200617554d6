#!/usr/bin/env bash
# Rebuild the GPU hashing kernels' PTX from their CUDA source. The PTX is
# committed, so installing modelvault needs no CUDA compiler; run this after
# editing kernels/blake3.cu (tests/formats/torch/test_blake3_kernel.py checks
# the committed PTX matches the source where nvcc is installed).
set -euo pipefail
cd "$(dirname "$0")/../src/modelvault/formats/_torch/kernels"
NVCC=${NVCC:-nvcc}
"$NVCC" -ptx -arch=compute_75 -O3 -o blake3.ptx blake3.cu
echo "wrote $(pwd)/blake3.ptx"
