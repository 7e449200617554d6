"""The GPU hashing kernels' tree logic, checked on the CPU, and the shipped PTX against its source.

``kernels/blake3.cu`` builds, with ``-DMV_HOST_TEST``, into a CPU program that
runs both kernels' logic (per-chunk compression, the in-block reduction, the
per-input reduction, the ROOT flag's placement) and prints the digest of its
input; it must equal the reference BLAKE3 at every edge of the tree. The GPU
itself runs the same source in ``tests/gpu/test_cuda_blake3.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import blake3
import pytest

KERNELS = (
    Path(__file__).resolve().parents[3] / "src" / "modelvault" / "formats" / "_torch" / "kernels"
)
KIB = 1024
SIZES = [
    0, 1, 63, 64, 65, 1023, 1024, 1025, 2048, 3077,
    256 * KIB - 1, 256 * KIB, 256 * KIB + 1, 257 * KIB, 512 * KIB, 512 * KIB + 1,
    3 * 256 * KIB + 5, 1 << 20, (1 << 20) + 17, 5 * (1 << 20) + 3, 16 << 20, (16 << 20) + 7 * KIB + 3,
]  # fmt: skip


@pytest.fixture(scope="module")
def host_kernel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler (cc or gcc) is needed to check the kernels' logic on the CPU"
    out = tmp_path_factory.mktemp("kernel") / "blake3-host"
    subprocess.run(
        [cc, "-O2", "-DMV_HOST_TEST", "-x", "c", str(KERNELS / "blake3.cu"), "-o", str(out)],
        check=True,
    )
    return out


@pytest.mark.parametrize("size", SIZES)
def test_host_emulation_matches_the_reference(host_kernel: Path, size: int) -> None:
    data = os.urandom(size)
    got = subprocess.run([str(host_kernel)], input=data, capture_output=True, check=True).stdout
    assert got.decode().strip() == blake3.blake3(data).hexdigest()


def test_shipped_ptx_is_built_from_the_source(tmp_path: Path) -> None:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed: the committed PTX cannot be rebuilt here")
    out = tmp_path / "blake3.ptx"
    subprocess.run(
        [nvcc, "-ptx", "-arch=compute_75", "-O3", "-o", str(out), str(KERNELS / "blake3.cu")],
        check=True,
    )
    assert out.read_bytes() == (KERNELS / "blake3.ptx").read_bytes(), (
        "kernels/blake3.ptx is stale: run scripts/build_kernels.sh"
    )


def test_the_ptx_names_both_kernels() -> None:
    text = (KERNELS / "blake3.ptx").read_text()
    assert ".entry mv_blake3_chunks" in text and ".entry mv_blake3_reduce" in text
