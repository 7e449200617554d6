"""The Python sources of real Torch-TensorRT releases, fetched from PyPI, and their modules imported.

2.11, 2.12 and 2.13 are the releases read in full; 2.2, 2.3, 2.5, 2.7 and
2.10 are fetched for their ``runtime.h`` alone (the ABI table's history).

Why fetch rather than vendor: the fixtures must come from the exact release
files, all of them reachable (a real module imports a dozen siblings), and
the repository should carry no third-party code. The wheels are pinned by
sha256 below, so a test reads exactly the bytes named here; they are
downloaded once per machine with ``pip download --no-deps`` into
``$MODELVAULT_TEST_CACHE`` (default ``~/.cache/modelvault-tests``) and only
the ``.py`` files and ``core/runtime/runtime.h`` are unpacked. When the
download fails the tests fail, saying so: they never skip.

Importing a release module: TensorRT and the Torch-TensorRT C++ runtime
cannot be installed here, so :func:`release` puts a stand-in ``tensorrt``
module in ``sys.modules`` and empty package shells for ``torch_tensorrt``,
``torch_tensorrt.dynamo``, ``torch_tensorrt.dynamo.runtime`` and
``torch_tensorrt.runtime`` (whose ``__init__`` would load ``libtorchtrt``),
then imports the real module files from the release. Three release modules
are replaced by stand-ins because they probe the native side at import time:
``torch_tensorrt._features`` (finds ``libtorchtrt.so`` and CUDA; the stand-in
says what a machine without the C++ runtime says: ``torch_tensorrt_runtime``
False), ``torch_tensorrt.dynamo.utils`` (imports psutil and probes CUDA; only
its constant ``DYNAMIC_DIM = -1`` is needed) and ``torch_tensorrt.runtime._utils``
(annotations name ``torch._C._CudaDeviceProperties``, absent from CPU torch;
only GPU selection helpers live there); and ``CompilationSettings.__getstate__``
imports ``dynamo.conversion._ConverterRegistry`` (the table of TensorRT
converters, which imports every converter), stood in by one that names an op
by ``str``. Everything else imported is the
release's own code: ``_serialized_engine_layout``, ``_TRTEngine``, ``_enums``,
``dynamo._settings`` (``CompilationSettings``), ``dynamo._defaults``,
``logging``, ``runtime._runtime_config``.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import importlib
import importlib.machinery
import os
import re
import subprocess
import sys
import types
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True)
class Release:
    version: str
    wheel: str
    sha256: str
    #: The pytorch/TensorRT commit the release tag ``v<version>`` points at.
    commit: str


RELEASES = {
    r.version: r
    for r in (
        # Older releases, for their core/runtime/runtime.h only (the ABI table's history).
        Release(
            "2.2.0",
            "torch_tensorrt-2.2.0-cp311-cp311-manylinux_2_34_x86_64.whl",
            "7c66e44b760104bb14207467a0f831b28ac37cd3a24e3372b6df8fd77f6dd798",
            "4c3d026ea64bd646a840bf174ef9d1818f10c20f",
        ),
        Release(
            "2.3.0",
            "torch_tensorrt-2.3.0-cp311-cp311-manylinux_2_31_x86_64.manylinux_2_34_x86_64.whl",
            "a2c5afc5d8dc93efb1b08e3b8cbbdab161ee76df2b27141c1ad97ee09f6f67b6",
            "52ba6f1e3ff5b905e15a12b500af2d4abf847e21",
        ),
        Release(
            "2.5.0",
            "torch_tensorrt-2.5.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64"
            ".manylinux_2_34_x86_64.whl",
            "1b408fe06ba0e855cb6a142a2ac27815ab45f43c05d3e3880c8602429cddb27f",
            "f2e1e6c7d20068f6b21edbee4bdb4218d715dc75",
        ),
        Release(
            "2.7.0",
            "torch_tensorrt-2.7.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_34_x86_64.whl",
            "d0581a8dbe2ebd687157e23a6c79bacd6f4d57442a69af3d3c321b7ef4c46b18",
            "8250319dfe75a2e5271f391de354787f82c81570",
        ),
        Release(
            "2.10.0",
            "torch_tensorrt-2.10.0-cp311-cp311-manylinux_2_28_x86_64.whl",
            "b64450453b5d06bf91d17b082eb78b0f250f18a1bb6f3f2ae3965deca0f2a22f",
            "1a1c2e20dce4392c1c2a63d3587e86c9ca637c03",
        ),
        Release(
            "2.11.0",
            "torch_tensorrt-2.11.0-cp311-cp311-manylinux_2_28_x86_64.whl",
            "ba45f3420ab3978e39346a0b40fb0da9e539869676e5242519f95d58909c0901",
            "0cc00aa045250fd4023e28fe9f1e9ee4186fd07c",
        ),
        Release(
            "2.12.0",
            "torch_tensorrt-2.12.0-cp311-cp311-manylinux_2_28_x86_64.whl",
            "41f9c6e5decaa7a350f0f320b9456f087b5074b3b14f778f7fc7d056234dfa39",
            "9afefd0430e54d7f3b78e53a36378cf891a3e1af",
        ),
        Release(
            "2.13.0",
            "torch_tensorrt-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl",
            "91b0cc45e4c1d7612b31a556116f01868393c3d7fdec97c6a703aef74335911c",
            "64f0ed46c01c61fe2a7cc93b47f393c3a7da9f75",
        ),
    )
}
RUNTIME_H = "torch_tensorrt/include/torch_tensorrt/core/runtime/runtime.h"


def cache_root() -> Path:
    env = os.environ.get("MODELVAULT_TEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "modelvault-tests"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sources(version: str) -> Path:
    """The unpacked ``.py`` files (and ``runtime.h``) of a release; the directory holding ``torch_tensorrt/``."""
    rel = RELEASES[version]
    root = cache_root() / f"torch_tensorrt-{version}"
    done = root / ".unpacked"
    if done.is_file() and done.read_text() == rel.sha256:
        return root
    wheel_dir = cache_root() / "wheels"
    wheel = wheel_dir / rel.wheel
    if not (wheel.is_file() and _sha256(wheel) == rel.sha256):
        wheel_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.11", "--implementation", "cp",
            *(f"--platform=manylinux_2_{n}_x86_64" for n in (17, 27, 28, 31, 34)),
            "-d", str(wheel_dir),
            f"torch-tensorrt=={version}",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not wheel.is_file():
            pytest.fail(
                f"these tests read the Python sources of Torch-TensorRT {version} and could not download "
                f"them ({' '.join(cmd)} exited {proc.returncode}): {proc.stderr.strip()[-800:]}",
                pytrace=False,
            )
    actual = _sha256(wheel)
    if actual != rel.sha256:
        pytest.fail(f"{wheel} has sha256 {actual}, not the pinned {rel.sha256}", pytrace=False)
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.startswith("torch_tensorrt/") and (name.endswith(".py") or name == RUNTIME_H):
                zf.extract(name, root)
    done.write_text(rel.sha256)
    return root


def runtime_h_layout(version: str) -> tuple[str, list[str]]:
    """``ABI_VERSION`` and the ``SerializedInfoIndex`` names, in order, from the release's ``runtime.h``."""
    text = (sources(version) / RUNTIME_H).read_text()
    abi = re.search(r'ABI_VERSION = "(\d+)"', text)
    body = re.search(r"typedef enum \{\s*ABI_TARGET_IDX = 0,(.*?)SERIALIZATION_LEN", text, re.S)
    assert abi and body, f"runtime.h of {version} has no ABI_VERSION / SerializedInfoIndex"
    names = ["ABI_TARGET_IDX", *re.findall(r"(\w+_IDX)", body.group(1))]
    return abi.group(1), names


# -- importing release modules ---------------------------------------------------------


class _AnyType(type):
    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _any_type(name)


def _any_type(name: str) -> type:
    return _AnyType(name, (), {"__init__": lambda self, *a, **k: None})


class _StandInTensorRT(types.ModuleType):
    """``tensorrt``: every attribute is an empty class (enough for class bodies and annotations)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = _any_type(name)
        setattr(self, name, value)
        return value


_FEATURES = collections.namedtuple(
    "FeatureSet",
    [
        "torchscript_frontend",
        "torch_tensorrt_runtime",
        "dynamo_frontend",
        "fx_frontend",
        "refit",
        "qdp_plugin",
        "windows_cross_compile",
        "tensorrt_rtx",
        "trtllm_for_nccl",
        "native_trt_collectives",
    ],
)


def _stand_ins(version: str, root: Path) -> dict[str, types.ModuleType]:
    mods: dict[str, types.ModuleType] = {}
    trt = _StandInTensorRT("tensorrt")
    trt.__version__ = "10.14.1"  # type: ignore[attr-defined]
    trt.__path__ = []  # type: ignore[attr-defined]
    mods["tensorrt"] = trt
    for name, sub in (
        ("torch_tensorrt", ""),
        ("torch_tensorrt.dynamo", "dynamo"),
        ("torch_tensorrt.dynamo.runtime", "dynamo/runtime"),
        ("torch_tensorrt.runtime", "runtime"),
        ("torch_tensorrt.dynamo.conversion", "dynamo/conversion"),
    ):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(root / "torch_tensorrt" / sub).rstrip("/")]
        mods[name] = pkg
    features = types.ModuleType("torch_tensorrt._features")
    enabled = _FEATURES(False, False, True, False, True, False, False, False, False, False)
    features.ENABLED_FEATURES = enabled  # type: ignore[attr-defined]

    def passthrough(f: Any) -> Any:
        return f

    for n in (
        "needs_torch_tensorrt_runtime",
        "needs_refit",
        "needs_qdp_plugin",
        "needs_not_tensorrt_rtx",
        "needs_tensorrt_rtx",
        "needs_cross_compile",
        "needs_trtllm_for_nccl",
        "needs_native_collectives",
    ):
        setattr(features, n, passthrough)
    features.for_all_methods = lambda dec, exclude=None: passthrough  # type: ignore[attr-defined]
    features.has_torch_tensorrt_runtime = lambda: False  # type: ignore[attr-defined]
    features.has_torchscript_frontend = lambda: False  # type: ignore[attr-defined]
    mods["torch_tensorrt._features"] = features
    mods["torch_tensorrt"].ENABLED_FEATURES = enabled  # type: ignore[attr-defined]
    mods["torch_tensorrt"].__version__ = version  # type: ignore[attr-defined]
    utils = types.ModuleType("torch_tensorrt.dynamo.utils")
    utils.DYNAMIC_DIM = -1  # type: ignore[attr-defined]
    mods[utils.__name__] = utils
    rt_utils = types.ModuleType("torch_tensorrt.runtime._utils")
    for n in ("_is_switch_required", "_select_rt_device", "multi_gpu_device_check"):
        setattr(rt_utils, n, None)
    mods[rt_utils.__name__] = rt_utils
    registry = types.ModuleType("torch_tensorrt.dynamo.conversion._ConverterRegistry")

    class ConverterRegistry:
        @staticmethod
        def qualified_name_or_str(op: Any) -> str:
            return str(op)

    registry.ConverterRegistry = ConverterRegistry  # type: ignore[attr-defined]
    mods[registry.__name__] = registry
    for name, mod in mods.items():
        # torch._dynamo's trace rules call importlib.util.find_spec on every loaded module.
        mod.__spec__ = importlib.machinery.ModuleSpec(
            name, None, is_package=hasattr(mod, "__path__")
        )
    return mods


def _ours(name: str) -> bool:
    return name == "tensorrt" or name.startswith(("tensorrt.", "torch_tensorrt"))


@dataclass
class ReleaseModules:
    """The modules of one release, imported once; :meth:`active` puts them in ``sys.modules``."""

    version: str
    root: Path
    modules: dict[str, types.ModuleType] = field(default_factory=dict)

    @contextlib.contextmanager
    def active(self) -> Iterator[ReleaseModules]:
        saved = {k: v for k, v in sys.modules.items() if _ours(k)}
        for k in saved:
            del sys.modules[k]
        sys.modules.update(self.modules)
        try:
            yield self
        finally:
            for k in [k for k in sys.modules if _ours(k)]:
                self.modules[k] = sys.modules.pop(k)
            sys.modules.update(saved)

    def module(self, name: str) -> Any:
        """Import ``name`` from the release (inside :meth:`active`)."""
        return importlib.import_module(name)


_LOADED: dict[str, ReleaseModules] = {}


def release(version: str) -> ReleaseModules:
    """The release's modules (see the module docstring); use ``with rel.active(): ...``."""
    if version not in _LOADED:
        import torch.export._trace  # noqa: F401  (imports torch._dynamo before any stand-in exists)

        root = sources(version)
        _LOADED[version] = ReleaseModules(version, root, _stand_ins(version, root))
    return _LOADED[version]


def function_source(version: str, relpath: str, name: str) -> str:
    """The exact source text of one top-level function of a release file (for executing it alone)."""
    import ast

    path = sources(version) / "torch_tensorrt" / relpath
    text = path.read_text()
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_source_segment(text, node) or ""
    raise AssertionError(f"{relpath} of Torch-TensorRT {version} has no function {name}")
