"""The ``torch_tensorrt`` format: programs whose graphs call TensorRT engines.

A variant is the program exactly as Torch-TensorRT saves it (a ``.pt2``
ExportedProgram with the engines inlined, or a TorchScript archive) in one
``program`` blob, plus, in the manifest, every engine's summary and the
requirements (``target``) derived from the engines: compute capability,
TensorRT major.minor, runtime ABI, platform, CUDA major. The loader ranks
variants on those requirements (:mod:`modelvault.targets`) before any byte of
an engine reaches TensorRT.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import os
import shutil
import tempfile
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from ...digest import new_hasher
from ...errors import (
    DeviceError,
    EngineInfoError,
    InvalidArgumentError,
    MissingDependencyError,
    NoCompatibleVariantError,
    PayloadMismatchError,
)
from ...targets import Machine, check, parse_device_index
from ..base import Built, FormatPlugin, SiblingNeed, VersionView
from ..container import ContainerSource, Draft, FileSource
from ..manifest import Manifest
from .archive import IR, detect_ir, find_engine_states
from .engine_info import EngineInfo, parse_engine_info
from .requirements import requirements_from_engines

__all__ = [
    "MEDIA_TYPES",
    "TorchTensorRTPlugin",
    "device_problems",
    "import_runtime",
    "inspect_program",
]

MEDIA_TYPES: dict[str, str] = {
    "exported_program": "application/vnd.pytorch.export.pt2+zip",
    "torchscript": "application/vnd.pytorch.torchscript+zip",
}
_SUFFIX = {"exported_program": ".pt2", "torchscript": ".ts"}
_TRT_MODULE_CLASSES = {"TorchTensorRTModule", "PythonTorchTensorRTModule"}
_PY_ENGINE_CLASSES = {
    "torch_tensorrt.dynamo.runtime._TRTEngine.TRTEngine",
    "torch_tensorrt.dynamo.runtime._TRTEngine.EngineSerializer",
}


def import_runtime(purpose: str = "loading a TensorRT variant") -> Any:
    """Import torch_tensorrt (registers ``torch.classes.tensorrt.Engine``) or say which package is missing."""
    try:
        return importlib.import_module("torch_tensorrt")
    except ImportError as exc:
        missing = exc.name or "torch_tensorrt"
        raise MissingDependencyError(missing, "tensorrt", purpose) from exc
    except OSError as exc:  # the package is there but a shared library (libnvinfer) is not
        err = MissingDependencyError("TensorRT libraries", "tensorrt", purpose)
        err.hint = f"torch_tensorrt failed to load a shared library: {exc}"
        raise err from exc


def inspect_program(path: Path) -> tuple[IR, list[EngineInfo]]:
    """The IR of a saved program and the parsed info of every engine in it (no torch needed)."""
    ir = detect_ir(path)
    states = find_engine_states(path)
    if not states:
        other = "exported_program" if ir == "exported_program" else "torchscript"
        raise PayloadMismatchError(
            f"{path.name} is a {'.pt2 ExportedProgram' if ir == 'exported_program' else 'TorchScript program'} "
            "with no TensorRT engine in it (no torch.classes.tensorrt.Engine, EngineSerializer, TRTEngine or cross-compiled engine placeholder)",
            hint=f"push it with format='{other}', or compile it with torch_tensorrt first",
        )
    infos = [
        dataclasses.replace(
            parse_engine_info(s.fields, engine_encoding="base64", where=s.member), form=s.form
        )
        for s in states
    ]
    return ir, infos


def device_problems(engines: list[Mapping[str, Any]], machine: Machine, device: str) -> list[str]:
    """Why the runtime would not run these engines on ``device`` although its SM fits.

    The Torch-TensorRT runtime (``get_most_compatible_device``,
    ``core/runtime/runtime.cpp``) takes the one GPU of the engine's SM when
    there is one; with several, it takes only a GPU whose name equals the
    recorded device name, unless the engine is hardware-compatible, and
    prefers the current device. The load sets the current device to
    ``device``, so the name is what must be checked here.
    """
    kind, index = parse_device_index(device)
    if kind != "cuda":
        return []
    gpu = machine.gpu(index or 0)
    if gpu is None:
        return []  # check() already says the device does not exist
    out = []
    for e in engines:
        if e.get("hardware_compatible"):
            continue
        sm = str(e.get("compute_capability"))
        same_sm = [g for g in machine.devices if g.sm == sm]
        name = str(e.get("device_name", ""))
        if len(same_sm) > 1 and gpu.name != name:
            out.append(
                f"engine {e.get('name')!r} was built on a {name}; {device} is a {gpu.name} and this "
                f"machine has {len(same_sm)} GPUs of compute capability {sm}, so the runtime would "
                "pick one named like the engine's device, not the one asked for"
            )
    return out


def _contains_trt(obj: Any) -> bool:
    try:
        modules = obj.modules() if hasattr(obj, "modules") else ()
        for m in modules:
            if type(m).__name__ in _TRT_MODULE_CLASSES and type(m).__module__.startswith(
                "torch_tensorrt"
            ):
                return True
        consts = getattr(obj, "constants", None)
        if isinstance(consts, Mapping):
            for v in consts.values():
                # the Python runtime's TRTEngine, or 2.13's EngineSerializer (opaque objects)
                if f"{type(v).__module__}.{type(v).__qualname__}" in _PY_ENGINE_CLASSES:
                    return True
                qual = getattr(getattr(v, "_type", lambda: None)(), "qualified_name", lambda: "")()
                if "tensorrt.Engine" in str(qual):
                    return True
        graph = getattr(obj, "inlined_graph", None)
        if graph is not None and "torch.classes.tensorrt.Engine" in str(graph):
            return True
    except Exception:  # detection must never fail a push; the plugin is just not chosen
        return False
    return False


def _frameworks(options: Mapping[str, Any]) -> dict[str, str]:
    given = dict(options.get("frameworks") or {})
    if not isinstance(given, dict) or not all(isinstance(v, str) for v in given.values()):
        raise InvalidArgumentError(
            "frameworks must map names (tensorrt, torch_tensorrt, cuda, torch) to version strings"
        )
    unknown = set(given) - {"tensorrt", "torch_tensorrt", "cuda", "torch"}
    if unknown:
        raise InvalidArgumentError(f"frameworks has unknown keys: {', '.join(sorted(unknown))}")
    if len(given) < 4:
        m = Machine.probe()
        for key, value in (
            ("tensorrt", m.tensorrt),
            ("torch_tensorrt", m.torch_tensorrt),
            ("cuda", m.cuda),
            ("torch", m.torch),
        ):
            if key not in given and value:
                given[key] = value
    return given


class TorchTensorRTPlugin(FormatPlugin):
    """Torch-TensorRT programs (ExportedProgram or TorchScript) with embedded TensorRT engines."""

    name: ClassVar[str] = "torch_tensorrt"
    version: ClassVar[str] = "1"
    kind: ClassVar[str] = "tensorrt"
    description: ClassVar[str] = (
        "Torch-TensorRT compiled programs (.pt2 or TorchScript) with TensorRT engines"
    )

    # -- detection ----------------------------------------------------------
    def can_pack(self, obj: Any) -> bool:
        return _contains_trt(obj)

    def can_pack_path(self, path: Path) -> bool:
        try:
            detect_ir(path)
            return bool(find_engine_states(path))
        except Exception:  # not ours: let the next plugin look
            return False

    # -- push ---------------------------------------------------------------
    def pack(self, obj: Any, **options: Any) -> Draft:
        """Pack a saved program (path) or a live compiled module.

        Options: ``ir`` (``"exported_program"``, the default, or
        ``"torchscript"``) for live modules; ``arg_inputs``,
        ``kwarg_inputs``, ``inputs``, ``retrace``, ``dynamic_shapes`` passed to
        ``torch_tensorrt.save``; ``frameworks`` (versions of the environment
        that built the engines; defaults to this machine's); ``platform``
        (for ABIs older than "6").
        """
        tmpdir: str | None = None
        if isinstance(obj, (str, os.PathLike)):
            path = Path(obj)
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist or is not a file")
        else:
            tmpdir = tempfile.mkdtemp(prefix="mvault-trt-")
            try:
                path = self._save_live(obj, Path(tmpdir), options)
            except BaseException:
                shutil.rmtree(tmpdir, ignore_errors=True)
                raise
        try:
            draft = self._draft(path, options)
        except BaseException:
            if tmpdir:
                shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        if tmpdir:
            # The draft streams the file when it is written; remove it once the draft is gone.
            weakref.finalize(draft, shutil.rmtree, tmpdir, True)
        return draft

    def _save_live(self, obj: Any, tmp: Path, options: Mapping[str, Any]) -> Path:
        if not _contains_trt(obj):
            raise PayloadMismatchError(
                f"{type(obj).__qualname__} holds no TensorRT engine",
                hint="compile it with torch_tensorrt.compile first, or push it with another format",
            )
        ir = options.get("ir", "exported_program")
        if ir not in MEDIA_TYPES:
            raise InvalidArgumentError(
                f"ir must be 'exported_program' or 'torchscript', not {ir!r}"
            )
        tt = import_runtime("pushing a live Torch-TensorRT module")
        dest = tmp / f"program{_SUFFIX[ir]}"
        kwargs = {
            k: options[k]
            for k in ("arg_inputs", "kwarg_inputs", "inputs", "retrace", "dynamic_shapes")
            if k in options
        }
        tt.save(obj, str(dest), output_format=ir, **kwargs)
        return dest

    def _draft(self, path: Path, options: Mapping[str, Any]) -> Draft:
        ir, infos = inspect_program(path)
        fw = _frameworks(options)
        target = requirements_from_engines(
            infos,
            tensorrt=fw.get("tensorrt"),
            torch_tensorrt=fw.get("torch_tensorrt"),
            cuda=fw.get("cuda"),
            platform=options.get("platform"),
        )
        stripped = [e.weights_stripped for e in infos]
        if any(stripped) and not all(stripped):
            raise EngineInfoError(
                "some engines are weight-stripped and others are not; compile them with one setting"
            )
        if any(stripped) and not all(e.refittable for e in infos):
            raise EngineInfoError(
                "the engines are weight-stripped but not refittable (immutable_weights=True); "
                "they could never get their weights back"
            )
        if any(stripped) and ir == "torchscript":
            raise EngineInfoError(
                "weight-stripped engines in a TorchScript program cannot be refit by torch_tensorrt; "
                "save the module with output_format='exported_program'"
            )
        draft = Draft(plugin=self.name, plugin_version=self.version, frameworks=fw, target=target)
        index = draft.add_blob("program", MEDIA_TYPES[ir], FileSource(path))
        draft.payload = {
            "ir": ir,
            "program": {"blob": index},
            "engines": [e.summary() for e in infos],
            "weights": "refit_from_portable" if all(stripped) else "in_engines",
        }
        return draft

    # -- load ---------------------------------------------------------------
    def check(
        self, source: ContainerSource, device: str | None, machine: Machine | None = None
    ) -> list[str]:
        """Reasons this variant does not run on ``device`` here (empty when it does)."""
        return check(source.manifest.target, machine or Machine.probe(), device)

    def load(self, source: ContainerSource, *, device: str = "cuda:0", **options: Any) -> Any:
        """Import the runtime, check every requirement, verify the blob, then deserialize.

        Options: ``machine`` (a :class:`Machine`, for tests), ``return_program``
        (an ExportedProgram instead of its module), ``refit_from`` (a
        :class:`ContainerSource` of the version's portable variant, needed
        when the engines were weight-stripped), ``arg_inputs``/``kwarg_inputs``
        for the refit.
        """
        manifest = source.manifest
        tt = import_runtime()
        machine = options.get("machine") or Machine.probe(refresh=True)
        reasons = check(manifest.target, machine, device)
        if not reasons:
            reasons = device_problems(list(manifest.payload.get("engines", [])), machine, device)
        if reasons:
            label = f"{self.name} variant {manifest.digest[:19]}"
            raise NoCompatibleVariantError(
                f"the TensorRT variant cannot run on {device} here",
                [(label, "; ".join(reasons))],
                hint="load the portable variant, or build one here with build_missing=True",
            )
        ir = manifest.payload.get("ir")
        if ir not in MEDIA_TYPES:
            raise PayloadMismatchError(
                f"variant payload names IR {ir!r}; this plugin reads {', '.join(MEDIA_TYPES)}"
            )
        import torch

        program_bytes = _verified_copy(source, int(manifest.payload["program"]["blob"]))
        index = parse_device_index(device)[1] or 0
        try:
            # The runtime places engines on the current device when it fits (it may pick
            # another GPU otherwise), so the current device is the one asked for.
            on_gpu = torch.cuda.is_available()
            with torch.cuda.device(index) if on_gpu else contextlib.nullcontext():
                if ir == "torchscript":
                    return torch.jit.load(program_bytes, map_location=device)  # type: ignore[no-untyped-call]
                if not _has_cpp_runtime(tt):
                    # As torch_tensorrt.load does: the Python runtime registers execute_engine here.
                    importlib.import_module("torch_tensorrt.dynamo.runtime._TRTEngine")
                # torch.export.load directly, not torch_tensorrt.load, which catches this error,
                # prints it, retries torch.jit.load and raises a ValueError without the reason.
                program = torch.export.load(program_bytes)
        except Exception as exc:
            # Every recorded requirement was checked above, so this is TensorRT refusing the plan
            # (a driver or library mismatch the engine info cannot record).
            raise DeviceError(
                f"TensorRT could not deserialize this variant's engines on {device}: "
                f"{type(exc).__name__}: {exc}",
                hint="load the portable variant (variant='exported_program'), or rebuild with build_missing=True",
            ) from exc
        finally:
            program_bytes.close()
        if manifest.payload.get("weights") == "refit_from_portable":
            portable = options.get("refit_from")
            if portable is None:
                raise InvalidArgumentError(
                    "this variant's engines were stored without weights; pass refit_from=<portable variant source>"
                )
            from .build import refit

            return refit(
                program,
                portable,
                device=device,
                arg_inputs=options.get("arg_inputs"),
                kwarg_inputs=options.get("kwarg_inputs"),
            )
        return program if options.get("return_program") else program.module()

    # -- the version hooks of FormatPlugin ------------------------------------------
    def siblings_needed(self, manifest: Manifest) -> list[SiblingNeed]:
        """A weight-stripped variant needs the portable ExportedProgram it is refit from."""
        from .build import REFIT_NEED

        return [REFIT_NEED] if manifest.payload.get("weights") == "refit_from_portable" else []

    def can_build(self, device: str, best: Any | None, view: VersionView) -> bool:
        from .build import wants_build

        return wants_build(best, device)

    def build(
        self,
        view: VersionView,
        *,
        device: str,
        settings: Mapping[str, Any],
        options: Mapping[str, Any],
    ) -> Built:
        from .build import build_on_miss

        return build_on_miss(view, device=device, settings=settings, options=options)

    def export_native(self, source: ContainerSource, dest: Path, **options: Any) -> Path:
        """Copy the program, verified, to ``dest`` (``torch_tensorrt.load`` reads it)."""
        index = int(source.manifest.payload["program"]["blob"])
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as out:
                _hash_copy(source, index, out)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return dest

    def native_suffix(self, source: ContainerSource) -> str:
        return _SUFFIX.get(str(source.manifest.payload.get("ir")), ".pt2")


def _has_cpp_runtime(tt: Any) -> bool:
    features = getattr(tt, "ENABLED_FEATURES", None)
    return bool(getattr(features, "torch_tensorrt_runtime", True))


def _hash_copy(source: ContainerSource, index: int, out: Any) -> None:
    """Write blob ``index`` to ``out`` while hashing it; :class:`IntegrityError` when it does not
    match. What is written is exactly what was hashed, so a file changed underneath (a cache
    entry rewritten) can never reach the runtime unverified."""
    from ...errors import IntegrityError

    ref = source.manifest.blobs[index]
    loc = source.locate(index)
    h = new_hasher(ref.digest.split(":", 1)[0])
    with loc.path.open("rb") as f:
        f.seek(loc.offset)
        left = ref.size
        while left > 0:
            chunk = f.read(min(left, 8 << 20))
            if not chunk:
                break
            h.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    actual = h.digest_str()
    if actual != ref.digest:
        raise IntegrityError(
            f"blob {index} ({ref.role}) does not match its digest; refusing to deserialize it",
            expected=ref.digest,
            actual=actual,
            where=str(loc.path),
        )


def _verified_copy(source: ContainerSource, index: int) -> io.BufferedRandom:
    """Blob ``index`` in a private anonymous temporary file, hashed while copied, rewound.

    The runtime reads this file object, never the cache or store path (see :func:`_hash_copy`);
    the file has no name, so nothing else can open it, and it is gone when closed.
    """
    out = tempfile.TemporaryFile(prefix="mvault-trt-")  # noqa: SIM115  (closed by the caller)
    try:
        _hash_copy(source, index, out)
        out.seek(0)
    except BaseException:
        out.close()
        raise
    return out
