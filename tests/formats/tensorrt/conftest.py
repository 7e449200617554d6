"""Builders for Torch-TensorRT serialized info lists, metadata pickles and archives.

TensorRT cannot be installed on the CPU test machines, so the info lists are
built here, field by field, in each ABI layout of the plugin's table (ABIs
4 to 10, including layouts no release downloaded here wrote). The table
itself is checked against each release's ``runtime.h``, and the programs
2.11, 2.12 and 2.13 really write are built from their own code, in
``release_fixtures.py`` / ``test_releases.py``. Here the metadata pickle is
written by classes that carry torch_tensorrt's module and class names (so the
bytes name the same globals as a real ``encode_metadata``) without importing
torch_tensorrt.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import enum
import io
import pickle
import sys
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelvault.formats.torch_tensorrt.engine_info import ABI_LAYOUTS
from modelvault.targets import GpuDevice, Machine
from tests.cli.conftest import Result, mvault  # noqa: F401  (re-exported fixture)

PLAN = b"ftrt" + bytes(range(256)) * 4  # stands in for a TensorRT plan: only its bytes matter here
STACK_STRING = "__torch__.torch.classes._TorchScriptTesting._StackString"
#: Framework versions recorded by pushes in these tests, and the machine they match.
FW = {"tensorrt": "10.3.0", "torch_tensorrt": "2.13.0", "cuda": "12.4"}
H100 = Machine(
    "linux_x86_64",
    True,
    (GpuDevice(0, "H100", (9, 0)),),
    cuda="12.4",
    tensorrt="10.3.0",
    torch_tensorrt="2.13.0",
    torch_tensorrt_abi="9",
    torch="2.13.0",
)


# -- a metadata pickle naming torch_tensorrt's real globals --------------------------


def _module(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    return mod


class _Dtype(enum.Enum):
    f32 = 1
    f16 = 2


@dataclasses.dataclass
class _Device:
    device_type: Any = None
    gpu_id: int = 0
    dla_core: int = -1


@dataclasses.dataclass
class _Settings:
    enabled_precisions: set[Any] = dataclasses.field(default_factory=set)
    hardware_compatible: bool = False
    immutable_weights: bool = True
    strip_engine_weights: bool = False
    optimization_level: int | None = None
    workspace_size: int = 0
    device: Any = None


_FAKES = {
    "torch_tensorrt._enums": {"dtype": _Dtype},
    "torch_tensorrt._Device": {"Device": _Device},
    "torch_tensorrt.dynamo._settings": {"CompilationSettings": _Settings},
}


@pytest.fixture
def trt_names() -> Iterator[None]:
    """While active, the stand-in classes pickle under torch_tensorrt's module names."""
    with pickled_as_torch_tensorrt():
        yield


@contextlib.contextmanager
def pickled_as_torch_tensorrt() -> Iterator[None]:
    """Context manager form of ``trt_names``: keep it short, since it shadows torch_tensorrt."""
    saved: dict[str, Any] = {}
    for parent in ("torch_tensorrt", "torch_tensorrt.dynamo"):
        saved[parent] = sys.modules.get(parent)
        sys.modules[parent] = _module(parent)
    for mod_name, classes in _FAKES.items():
        saved[mod_name] = sys.modules.get(mod_name)
        mod = _module(mod_name)
        for cls_name, cls in classes.items():
            cls.__module__ = mod_name
            cls.__qualname__ = cls_name
            cls.__name__ = cls_name
            setattr(mod, cls_name, cls)
        sys.modules[mod_name] = mod
    try:
        yield
    finally:
        for mod_name, old in saved.items():
            if old is None:
                sys.modules.pop(mod_name, None)
            else:
                sys.modules[mod_name] = old


def metadata_b64(**settings: Any) -> str:
    """base64(pickle({"settings": CompilationSettings(...), ...})), as ``encode_metadata`` writes it.

    Needs the ``trt_names`` fixture active so the classes pickle under torch_tensorrt's names.
    """
    import torch

    s = _Settings(**settings)
    if not s.enabled_precisions:
        s.enabled_precisions = {_Dtype.f16, torch.float32}
    s.device = _Device(gpu_id=0)
    meta = {
        "settings": s,
        "weight_name_map": {"conv.weight": "conv.weight"} if not s.immutable_weights else None,
        "inout_symexprs": None,
        "output_tensors_are_unowned": False,
    }
    return base64.b64encode(pickle.dumps(meta)).decode("utf-8")


def info_list(
    abi: str = "9",
    *,
    count: int | None = None,
    sm: tuple[int, int] = (8, 6),
    name: str = "_run_on_acc_0_engine",
    device_name: str = "NVIDIA A10G",
    hw: bool = False,
    platform: str = "linux_x86_64",
    metadata: str = "",
    plan: bytes = PLAN,
    encoding: str = "base64",
) -> list[str | bytes]:
    """One engine info list in the ABI's layout, with the engine base64 (pickled form) or raw."""
    layouts = ABI_LAYOUTS[abi]
    fields = next(
        (lay.fields for lay in layouts if count is None or len(lay.fields) == count),
        layouts[-1].fields,
    )
    values: dict[str, str | bytes] = {
        "abi": abi,
        "name": name,
        "device": f"0%{sm[0]}%{sm[1]}%0%{device_name}",
        "engine": base64.b64encode(plan).decode() if encoding == "base64" else plan,
        "input_binding_names": "x",
        "output_binding_names": "output0",
        "hw_compatible": "1" if hw else "0",
        "serialized_metadata": metadata,
        "target_platform": platform,
        "requires_output_allocator": "0",
        "resource_allocation_strategy": "0",
        "requires_native_multidevice": "0",
        "aliased_io": "",
    }
    return [values[f] for f in fields]


# -- real torch archives holding a list-of-strings torchbind object ----------------


@pytest.fixture(scope="session")
def torchbind() -> Any:
    """torch's own torchbind test class ``_StackString``: its pickled state is a list of strings,
    exactly the shape of ``torch.classes.tensorrt.Engine``'s."""
    torch = pytest.importorskip("torch")
    lib = Path(torch.__path__[0]) / "lib" / "libtorchbind_test.so"
    assert lib.exists(), f"{lib} is part of the torch wheel and is needed for these tests"
    torch.ops.load_library(str(lib))
    return torch.classes._TorchScriptTesting._StackString


def rename_engine_class(src: Path, dest: Path) -> Path:
    """Copy a torch-written archive, renaming the test class to Torch-TensorRT's engine class
    in every pickle (the only difference between these archives and real ones)."""
    old = b"c__torch__.torch.classes._TorchScriptTesting\n_StackString\n"
    new = b"c__torch__.torch.classes.tensorrt\nEngine\n"

    def rewrite(data: bytes) -> bytes:
        buf = io.BytesIO()
        with (
            zipfile.ZipFile(io.BytesIO(data)) as zin,
            zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zout,
        ):
            for info in zin.infolist():
                body = zin.read(info)
                if body[:4] == b"PK\x03\x04":
                    body = rewrite(body)
                elif info.filename.endswith(".pkl"):
                    body = body.replace(old, new)
                zout.writestr(info.filename, body)
        return buf.getvalue()

    dest.write_bytes(rewrite(src.read_bytes()))
    return dest


def save_torchscript(torchbind: Any, path: Path, states: list[list[str | bytes]]) -> Path:
    """A real TorchScript archive (torch.jit.script + save) holding one object per state."""
    import torch

    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            for i, st in enumerate(states):
                setattr(
                    self,
                    f"engine{i}",
                    torchbind([str(x) if isinstance(x, str) else x.decode() for x in st]),
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)

    torch.jit.script(M()).save(str(path))
    return path


def save_pt2(torchbind: Any, path: Path, states: list[list[str | bytes]]) -> Path:
    """A real .pt2 (torch.export.save) whose constants hold one object per state."""
    import torch

    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)

    ep = torch.export.export(M(), (torch.ones(1, 2),))
    for i, st in enumerate(states):
        ep._constants[f"_run_on_acc_{i}_engine"] = torchbind(
            [x if isinstance(x, str) else x.decode() for x in st]
        )
    torch.export.save(ep, str(path))
    return path


@pytest.fixture
def vault() -> Any:
    from modelvault.vault import Vault

    with Vault() as v:
        yield v


def small_module() -> Any:
    """A tiny module with one weight, for programs that carry no engine."""
    import torch

    class Small(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)

        def forward(self, x: Any) -> Any:
            return torch.relu(self.lin(x))

    return Small()
