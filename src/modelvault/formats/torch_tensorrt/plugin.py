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

import importlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from ...errors import (
    DeviceError,
    EngineInfoError,
    InvalidArgumentError,
    MissingDependencyError,
    NoCompatibleVariantError,
    PayloadMismatchError,
)
from ...targets import Machine, check
from ..base import FormatPlugin
from ..container import ContainerSource, Draft, FileSource
from ...digest import new_hasher
from .archive import IR, detect_ir, find_engine_states
from .engine_info import EngineInfo, parse_engine_info
from .requirements import requirements_from_engines

__all__ = [
    "MEDIA_TYPES",
    "TorchTensorRTPlugin",
    "build_variant",
    "compile_portable",
    "import_runtime",
    "inputs_from_signature",
    "inspect_program",
    "refit",
]

MEDIA_TYPES: dict[str, str] = {
    "exported_program": "application/vnd.pytorch.export.pt2+zip",
    "torchscript": "application/vnd.pytorch.torchscript+zip",
}
_SUFFIX = {"exported_program": ".pt2", "torchscript": ".ts"}
_TRT_MODULE_CLASSES = {"TorchTensorRTModule", "PythonTorchTensorRTModule"}


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
            "with no TensorRT engine in it (no torch.classes.tensorrt.Engine object)",
            hint=f"push it with format='{other}', or compile it with torch_tensorrt first",
        )
    infos = [parse_engine_info(s.fields, engine_encoding="base64", where=s.member) for s in states]
    return ir, infos


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
        path, cleanup = _verified_file(source, int(manifest.payload["program"]["blob"]))
        try:
            if ir == "torchscript":
                import torch

                return torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
            program = tt.load(str(path))
        except (RuntimeError, ValueError) as exc:
            # Every recorded requirement was checked above, so this is TensorRT refusing the plan
            # (a driver or library mismatch the engine info cannot record).
            raise DeviceError(
                f"TensorRT could not deserialize this variant's engines on {device}: {exc}",
                hint="load the portable variant (variant='exported_program'), or rebuild with build_missing=True",
            ) from exc
        finally:
            if cleanup:
                shutil.rmtree(cleanup, ignore_errors=True)
        if manifest.payload.get("weights") == "refit_from_portable":
            portable = options.get("refit_from")
            if portable is None:
                raise InvalidArgumentError(
                    "this variant's engines were stored without weights; pass refit_from=<portable variant source>"
                )
            return refit(
                program,
                portable,
                device=device,
                arg_inputs=options.get("arg_inputs"),
                kwarg_inputs=options.get("kwarg_inputs"),
            )
        return program if options.get("return_program") else program.module()

    def export_native(self, source: ContainerSource, dest: Path, **options: Any) -> Path:
        """Copy the program, verified, to ``dest`` (``torch_tensorrt.load`` reads it)."""
        index = int(source.manifest.payload["program"]["blob"])
        path, cleanup = _verified_file(source, index)
        try:
            dest = Path(dest)
            tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        finally:
            if cleanup:
                shutil.rmtree(cleanup, ignore_errors=True)
        return dest

    def native_suffix(self, source: ContainerSource) -> str:
        return _SUFFIX.get(str(source.manifest.payload.get("ir")), ".pt2")


def _verified_file(source: ContainerSource, index: int) -> tuple[Path, str | None]:
    """A local file holding exactly blob ``index``, hashed against its digest before use.

    Returns ``(path, tmpdir_to_remove)``. A blob that is a byte range of a
    larger file (a bundle) is copied out while it is hashed.
    """
    from ...errors import IntegrityError

    ref = source.manifest.blobs[index]
    loc = source.locate(index)
    whole = loc.offset == 0 and loc.path.stat().st_size == ref.size
    tmpdir = None if whole else tempfile.mkdtemp(prefix="mvault-trt-")
    out = None if whole else open(Path(tmpdir or ".") / "program", "wb")  # noqa: SIM115
    algorithm = ref.digest.split(":", 1)[0]
    h = new_hasher(algorithm)
    try:
        with loc.path.open("rb") as f:
            f.seek(loc.offset)
            left = ref.size
            while left > 0:
                chunk = f.read(min(left, 8 << 20))
                if not chunk:
                    break
                h.update(chunk)
                if out is not None:
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
    except BaseException:
        if out is not None:
            out.close()
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    if out is not None:
        out.close()
        return Path(tmpdir or ".") / "program", tmpdir
    return loc.path, None


# ---------------------------------------------------------------------------
# build on miss and refit: called by the vault


def _portable_program(portable: ContainerSource, device: str) -> Any:
    """The version's portable ExportedProgram, weights on ``device``."""
    import torch

    from ..registry import get_plugin

    plugin = get_plugin(portable.manifest.plugin)
    obj = plugin.load(portable, device=device)
    if isinstance(obj, torch.export.ExportedProgram):
        return obj
    tmp = tempfile.mkdtemp(prefix="mvault-trt-")
    try:
        path = plugin.export_native(portable, Path(tmp) / "portable.pt2")
        return torch.export.load(str(path))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def inputs_from_signature(signature: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Compile inputs (``min_shape``/``opt_shape``/``max_shape``/``dtype``) from a portable
    program's recorded signature; a dynamic dimension spans its recorded range, with
    ``opt`` at the range's low end.

    Raises :class:`InvalidArgumentError` when the signature cannot say (a non-tensor
    input, an unbounded or derived dimension): pass ``arg_inputs`` then.
    """
    dims = signature.get("dims") or {}
    out: list[dict[str, Any]] = []
    for entry in signature.get("inputs") or []:
        name = entry.get("name", "?")
        if "shape" not in entry or "dtype" not in entry:
            raise InvalidArgumentError(
                f"input {name!r} is not a tensor; pass compile_settings={{'arg_inputs': (...)}}"
            )
        lo: list[int] = []
        hi: list[int] = []
        for d in entry["shape"]:
            if isinstance(d, int):
                lo.append(d)
                hi.append(d)
                continue
            rng = dims.get(str(d))
            if not isinstance(rng, Mapping) or rng.get("max") is None:
                raise InvalidArgumentError(
                    f"input {name!r} has dimension {d!r} without a finite recorded range; "
                    "pass compile_settings={'arg_inputs': (torch_tensorrt.Input(...), ...)}"
                )
            lo.append(max(int(rng.get("min") or 1), 1))
            hi.append(int(rng["max"]))
        out.append(
            {
                "name": name,
                "min_shape": lo,
                "opt_shape": list(lo),
                "max_shape": hi,
                "dtype": entry["dtype"],
            }
        )
    if not out:
        raise InvalidArgumentError(
            "the portable program records no inputs; pass compile_settings={'arg_inputs': (...)}"
        )
    return out


def build_variant(
    portable_source: ContainerSource, *, device: str, settings: Mapping[str, Any]
) -> Any:
    """Compile a TensorRT module from the version's portable ExportedProgram, on ``device``.

    ``settings`` are ``torch_tensorrt.dynamo.compile`` keyword arguments
    (``enabled_precisions``, ``hardware_compatible``, ``immutable_weights``,
    ``strip_engine_weights``, ...) plus ``arg_inputs``/``kwarg_inputs``; when
    no inputs are given the program's own ``example_inputs`` are used.
    Returns the compiled ``torch.fx.GraphModule``; the vault pushes it back
    with :meth:`TorchTensorRTPlugin.pack` as a new variant.
    """
    return compile_portable(portable_source, device=device, settings=settings)[0]


def compile_portable(
    portable_source: ContainerSource, *, device: str, settings: Mapping[str, Any]
) -> tuple[Any, tuple[Any, ...], dict[str, Any] | None]:
    """:func:`build_variant`, also returning the inputs it compiled for (a push needs them)."""
    if portable_source.manifest.plugin != "exported_program":
        raise InvalidArgumentError(
            "build on miss compiles from an ExportedProgram variant; "
            f"this one is {portable_source.manifest.plugin!r}"
        )
    tt = import_runtime("building a TensorRT variant")
    import torch

    ep = _portable_program(portable_source, device)
    opts = dict(settings)
    arg_inputs = opts.pop("arg_inputs", None)
    kwarg_inputs = opts.pop("kwarg_inputs", None)
    if arg_inputs is None:
        specs = inputs_from_signature(portable_source.manifest.signature)
        arg_inputs = tuple(
            tt.Input(
                min_shape=s["min_shape"],
                opt_shape=s["opt_shape"],
                max_shape=s["max_shape"],
                dtype=getattr(torch, s["dtype"]),
            )
            for s in specs
        )
    else:
        arg_inputs = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in arg_inputs)
    module = tt.dynamo.compile(
        ep, arg_inputs=arg_inputs, kwarg_inputs=kwarg_inputs, device=torch.device(device), **opts
    )
    return module, arg_inputs, kwarg_inputs


def refit(
    program: Any,
    portable_source: ContainerSource,
    *,
    device: str = "cuda:0",
    arg_inputs: Any = None,
    kwarg_inputs: Any = None,
) -> Any:
    """Put the portable variant's weights into weight-stripped engines (``refit_module_weights``)."""
    tt = import_runtime("refitting TensorRT engines")
    ep = _portable_program(portable_source, device)
    return tt.dynamo.refit_module_weights(
        program, ep, arg_inputs=arg_inputs, kwarg_inputs=kwarg_inputs, in_place=False
    )
