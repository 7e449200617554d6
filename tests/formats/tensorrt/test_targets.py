"""Requirement checks and variant ranking over a matrix of machines, and the messages users see."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Mapping
from typing import Any

import pytest

from modelvault.errors import InvalidDeviceError
from modelvault.targets import (
    GpuDevice,
    Machine,
    check,
    current_platform,
    describe_requirements,
    parse_device_index,
    rank,
)

SMS = [(7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0)]
TRTS = ["10.3.0", "10.7.0.23"]
ABIS = ["8", "9"]
PLATFORMS = ["linux_x86_64", "linux_aarch64"]

VARIANTS: list[tuple[str, Mapping[str, Any]]] = [
    ("portable", {"device": "any"}),
    ("portable-cuda", {"device": "cuda"}),
    (
        "trt-sm86",
        {
            "kind": "tensorrt",
            "device": "cuda",
            "compute_capabilities": ["8.6"],
            "tensorrt": "10.3",
            "torch_tensorrt_abi": "9",
            "platform": "linux_x86_64",
            "cuda": "12",
        },
    ),
    (
        "trt-sm90",
        {
            "kind": "tensorrt",
            "device": "cuda",
            "compute_capabilities": ["9.0"],
            "tensorrt": "10.3",
            "torch_tensorrt_abi": "9",
            "platform": "linux_x86_64",
            "cuda": "12",
        },
    ),
    (
        "trt-hw",
        {
            "kind": "tensorrt",
            "device": "cuda",
            "compute_capabilities": {"min": "8.0"},
            "tensorrt": "10.3",
            "torch_tensorrt_abi": "9",
            "platform": "linux_x86_64",
            "cuda": "12",
        },
    ),
    (
        "trt-sm75-arm",
        {
            "kind": "tensorrt",
            "device": "cuda",
            "compute_capabilities": ["7.5"],
            "tensorrt": "10.7",
            "torch_tensorrt_abi": "8",
            "platform": "linux_aarch64",
            "cuda": "12",
        },
    ),
]


def machine(
    sm: tuple[int, int] = (8, 6),
    trt: str | None = "10.3.0",
    abi: str | None = "9",
    platform: str = "linux_x86_64",
    cuda: str | None = "12.4",
) -> Machine:
    return Machine(
        platform=platform,
        cuda_available=True,
        devices=(GpuDevice(0, f"GPU sm{sm[0]}{sm[1]}", sm),),
        cuda=cuda,
        tensorrt=trt,
        torch_tensorrt="2.13.0" if abi else None,
        torch_tensorrt_abi=abi,
        torch="2.13.0",
    )


def expected_fit(req: Mapping[str, Any], m: Machine) -> bool:
    """An independent statement of the rules, to compare the implementation against."""
    if req.get("kind") != "tensorrt":
        return True
    sm = m.devices[0].capability
    ccs = req["compute_capabilities"]
    sm_ok = sm >= (8, 0) if isinstance(ccs, dict) else f"{sm[0]}.{sm[1]}" in ccs
    trt_ok = m.tensorrt is not None and ".".join(m.tensorrt.split(".")[:2]) == req["tensorrt"]
    return (
        sm_ok
        and trt_ok
        and m.torch_tensorrt_abi == req["torch_tensorrt_abi"]
        and m.platform == req["platform"]
    )


@pytest.mark.parametrize(
    ("sm", "trt", "abi", "platform"), list(itertools.product(SMS, TRTS, ABIS, PLATFORMS))
)
def test_machine_matrix(sm: tuple[int, int], trt: str, abi: str, platform: str) -> None:
    m = machine(sm, trt, abi, platform)
    fitting, rejected = rank(VARIANTS, m, "cuda:0")
    want = [vid for vid, req in VARIANTS if expected_fit(req, m)]
    assert sorted(fitting) == sorted(want)
    assert {vid for vid, _ in rejected} == {vid for vid, _ in VARIANTS} - set(want)
    assert all(why for _, why in rejected), "every rejection says why"
    # best first: exact SM TensorRT, then hardware-compatible, then portable CUDA, then portable
    order = ["trt-sm86", "trt-sm90", "trt-sm75-arm", "trt-hw", "portable-cuda", "portable"]
    assert fitting == [v for v in order if v in fitting]
    assert fitting[-1] == "portable"


def test_best_choices_on_typical_machines() -> None:
    assert rank(VARIANTS, machine((8, 6)), "cuda:0")[0][0] == "trt-sm86"
    assert rank(VARIANTS, machine((9, 0)), "cuda")[0][0] == "trt-sm90"
    assert rank(VARIANTS, machine((8, 9)), "cuda:0")[0][0] == "trt-hw"
    assert rank(VARIANTS, machine((10, 0)), "cuda:0")[0][:2] == ["trt-hw", "portable-cuda"]
    assert rank(VARIANTS, machine((7, 5)), "cuda:0")[0] == ["portable-cuda", "portable"]


def test_cpu_device_gets_only_the_portable_variant() -> None:
    fitting, rejected = rank(VARIANTS, machine(), "cpu")
    assert fitting == ["portable"]
    assert dict(rejected)["trt-sm86"] == "needs a CUDA device; cpu was asked for"


def test_ties_keep_the_given_order() -> None:
    a = ("a", {"device": "any"})
    b = ("b", {"device": "any"})
    assert rank([b, a], machine(), "cuda:0")[0] == ["b", "a"]


# -- messages -----------------------------------------------------------------------

TRT_REQ = dict(VARIANTS[2][1])


def test_message_exact_sm() -> None:
    assert check(TRT_REQ, machine((9, 0)), "cuda:0") == [
        "built for compute capability 8.6; cuda:0 (GPU sm90) is 9.0"
    ]


def test_message_hardware_compatible_on_turing() -> None:
    assert check(VARIANTS[4][1], machine((7, 5)), "cuda:0") == [
        "hardware-compatible engine needs compute capability >= 8.0 (Ampere or newer); cuda:0 (GPU sm75) is 7.5"
    ]


def test_message_tensorrt_minor() -> None:
    assert check(TRT_REQ, machine(trt="10.7.0"), "cuda:0") == [
        "built with TensorRT 10.3; this machine has TensorRT 10.7.0 (an engine runs only on the "
        "exact TensorRT version that built it, unless compiled with version_compatible=True)"
    ]


def test_message_tensorrt_missing_names_the_import_problem() -> None:
    m = Machine(
        "linux_x86_64",
        True,
        (GpuDevice(0, "A10", (8, 6)),),
        cuda="12.4",
        problems={
            "tensorrt": "tensorrt is not importable: ImportError: libnvinfer.so.10: cannot open",
            "torch_tensorrt": "torch_tensorrt is not installed",
        },
    )
    reasons = check(TRT_REQ, m, "cuda:0")
    assert reasons == [
        "needs TensorRT 10.3; tensorrt is not importable: ImportError: libnvinfer.so.10: cannot open",
        "needs Torch-TensorRT runtime ABI 9; torch_tensorrt is not installed",
    ]


def test_message_abi() -> None:
    assert check(TRT_REQ, machine(abi="8"), "cuda:0") == [
        "serialized for Torch-TensorRT runtime ABI 9; this machine's torch_tensorrt 2.13.0 has ABI 8"
    ]


def test_message_platform_and_cuda() -> None:
    assert check(TRT_REQ, machine(platform="linux_aarch64", cuda="11.8"), "cuda:0") == [
        "built for platform linux_x86_64; this machine is linux_aarch64",
        "built against CUDA 12; this machine's torch uses CUDA 11.8",
    ]


def test_message_no_gpu() -> None:
    m = Machine("linux_x86_64", problems={"cuda": "RuntimeError: no driver"})
    reasons = check(TRT_REQ, m, "cuda:0")
    assert reasons[0] == "needs a CUDA GPU; this machine has none (RuntimeError: no driver)"


def test_message_missing_device_index() -> None:
    assert "cuda:3 does not exist here (this machine has 1 GPU(s))" in check(
        {"device": "cuda"}, machine(), "cuda:3"
    )


def test_unknown_requirement_keys_do_not_fit() -> None:
    assert check({"device": "any", "npu": "x1"}, machine(), "cpu") == [
        "requires npu, which this modelvault cannot check; upgrade modelvault"
    ]
    assert check({"device": "tpu"}, machine(), "cpu") == [
        "requires device 'tpu', which this modelvault does not know; upgrade modelvault"
    ]


@pytest.mark.parametrize("ccs", [["8"], ["x.y"], [], {"min": 8}, "8.6"])
def test_malformed_compute_capabilities(ccs: Any) -> None:
    reasons = check({"device": "cuda", "compute_capabilities": ccs}, machine(), "cuda:0")
    assert len(reasons) == 1 and "is malformed" in reasons[0]


def test_second_gpu_is_checked_when_asked_for() -> None:
    m = Machine(
        "linux_x86_64",
        True,
        (GpuDevice(0, "T4", (7, 5)), GpuDevice(1, "H100", (9, 0))),
        cuda="12.4",
        tensorrt="10.3.1",
        torch_tensorrt="2.13.0",
        torch_tensorrt_abi="9",
    )
    req = dict(VARIANTS[3][1])
    assert check(req, m, "cuda:1") == []
    assert check(req, m, "cuda:0") == ["built for compute capability 9.0; cuda:0 (T4) is 7.5"]


def test_device_strings() -> None:
    assert parse_device_index("cuda:1") == ("cuda", 1)
    assert parse_device_index("cuda") == ("cuda", None)
    assert parse_device_index(None) == ("cpu", None)
    with pytest.raises(InvalidDeviceError, match="'cuda:x' is not 'cpu', 'cuda' or 'cuda:N'"):
        parse_device_index("cuda:x")


def test_describe_requirements() -> None:
    assert describe_requirements(TRT_REQ) == "TensorRT 10.3, ABI 9, SM 8.6, linux_x86_64, CUDA 12"
    vc = {**TRT_REQ, "tensorrt": "10.14.1", "tensorrt_version_compatible": True}
    assert describe_requirements(vc).startswith("TensorRT 10.14.1 or later (version-compatible), ")
    assert (
        describe_requirements(VARIANTS[4][1])
        == "TensorRT 10.3, ABI 9, SM >= 8.0 (hardware-compatible), linux_x86_64, CUDA 12"
    )
    assert describe_requirements({"device": "any"}) == "portable"
    assert describe_requirements({"device": "cuda"}) == "portable (CUDA)"


def test_probe_here_is_cached_and_honest() -> None:
    m = Machine.probe()
    assert Machine.probe() is m
    assert m.platform == current_platform()
    assert m.torch is not None
    # this CPU machine has no TensorRT: the probe says so rather than guessing
    if "torch_tensorrt" not in sys.modules:
        assert m.torch_tensorrt is None and "torch_tensorrt" in m.problems


def test_targets_imports_nothing_heavy() -> None:
    import subprocess

    code = "import sys, modelvault.targets; print(sorted(m for m in ('torch', 'tensorrt', 'torch_tensorrt') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
