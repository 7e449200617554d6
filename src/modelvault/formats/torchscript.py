"""The ``torchscript`` format: a scripted or traced ``torch.jit.ScriptModule``.

By default the module's parameters and buffers go into the tensor section and
the archive (``torch.jit.save``) keeps only zero-stride placeholders that carry
each tensor's shape and dtype; code, constants, other attributes and
``_extra_files`` stay in the archive. Loading verifies the archive, loads it
with ``torch.jit.load`` and puts the real tensors back in place of the
placeholders. When that is not possible (or ``weights="archive"`` is asked
for), the whole archive is stored as one verified blob.

Payload (layout 1)::

    {
      "layout": 1,
      "archive": {"blob": <index>},
      "weights": "section" | "archive",
      "kind": "scripted" | "traced",
      "tensors": {path: {"parameter": bool, "requires_grad": bool}, ...},
      "extra_files": [name, ...],
      "weights_reason": "<why the section could not be used>",   # only when it fell back
    }

``path`` is a dotted attribute path (``"encoder.0.weight"``) and is also the
tensor's name in the tensor section; tied tensors are aliases.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import InvalidArgumentError, PayloadMismatchError, UnknownFormatError
from ._torch import _export_private as private
from ._torch.device import resolve_device
from ._torch.dtypes import to_name
from ._torch.section import add_tensors
from ._torch.signature import describe_value, fill_common
from ._torch.stream import BackgroundLoad, release, stream_options
from .base import FormatPlugin
from .container import BytesSource, ContainerSource, Draft, TensorSectionBuilder, read_blob

__all__ = ["ARCHIVE_MEDIA_TYPE", "TorchScriptPlugin", "is_torchscript_archive"]

ARCHIVE_MEDIA_TYPE = "application/vnd.pytorch.torchscript+zip"
# Dotted attribute names, no dunders: what named_parameters()/named_buffers() produce.
_PATH_RE = re.compile(r"^(?!.*__)[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
_MAX_ARCHIVE = 1 << 36


def _archive_names(z: zipfile.ZipFile) -> list[str]:
    return z.namelist()


def is_torchscript_archive(data: Path | bytes) -> bool:
    """True for a zip laid out like ``torch.jit.save`` output; nothing in it is executed."""
    try:
        with zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
    return "data.pkl" in tails and (
        "constants.pkl" in tails or any(t.startswith("code/") for t in tails)
    )


def _extra_file_names(data: Path | bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data) as z:
        out = []
        for n in z.namelist():
            parts = n.split("/", 2)
            if len(parts) == 3 and parts[1] == "extra" and parts[2]:
                out.append(parts[2])
        return sorted(out)


def _owner(root: Any, path: str) -> tuple[Any, str]:
    *parts, leaf = path.split(".")
    obj = root
    for p in parts:
        obj = getattr(obj, p)
    return obj, leaf


def _weights(module: Any) -> dict[str, tuple[torch.Tensor, bool]]:
    """Every parameter and buffer by dotted path (tied ones under each name): (tensor, is_parameter)."""
    out: dict[str, tuple[torch.Tensor, bool]] = {}
    for name, t in module.named_parameters(remove_duplicate=False):
        out[name] = (t, True)
    for name, t in module.named_buffers(remove_duplicate=False):
        out.setdefault(name, (t, False))
    return out


def _placeholder(t: torch.Tensor) -> torch.Tensor:
    # One element of storage that still carries the shape and dtype, for checking on load.
    return torch.zeros((), dtype=t.dtype).expand(t.shape)


@contextmanager
def _swapped(module: Any, values: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily set attributes of a ScriptModule; always restores the originals."""
    saved: dict[str, torch.Tensor] = {}
    try:
        for path, v in values.items():
            owner, leaf = _owner(module, path)
            saved[path] = getattr(owner, leaf)
            private.set_script_attribute(owner, leaf, v)
        yield
    finally:
        for path, v in saved.items():
            owner, leaf = _owner(module, path)
            private.set_script_attribute(owner, leaf, v)


def _signature(module: Any, example_inputs: Any) -> dict[str, Any]:
    schema = module.forward.schema
    args = list(schema.arguments)[1:]  # a method's first argument is the module itself
    if example_inputs is not None:
        ex = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        inputs = [describe_value(a.name, v) for a, v in zip(args, ex)]
        with torch.no_grad():
            out = module(*ex)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        outputs = [describe_value(f"output{i}", v) for i, v in enumerate(outs)]
        return {"inputs": inputs, "outputs": outputs}
    inputs = [{"name": a.name, "type": str(a.type)} for a in args]
    outputs = [
        {"name": r.name or f"output{i}", "type": str(r.type)} for i, r in enumerate(schema.returns)
    ]
    return {"inputs": inputs, "outputs": outputs}


class TorchScriptPlugin(FormatPlugin):
    """TorchScript modules (``torch.jit.script``/``torch.jit.trace``), weights in the tensor section."""

    name: ClassVar[str] = "torchscript"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = "TorchScript module (torch.jit.save archive)"

    def can_pack(self, obj: Any) -> bool:
        return isinstance(obj, torch.jit.ScriptModule)

    def can_pack_path(self, path: Path) -> bool:
        return path.is_file() and is_torchscript_archive(path)

    def pack(self, obj: Any, **options: Any) -> Draft:
        """Pack a ScriptModule or a TorchScript archive path.

        Options: ``extra_files`` (``{name: bytes|str}``, live modules only),
        ``weights`` (``"section"``, the default, or ``"archive"``),
        ``example_inputs`` (to record input and output shapes in the signature).
        """
        mode = options.get("weights", "section")
        if mode not in ("section", "archive"):
            raise InvalidArgumentError(f"weights must be 'section' or 'archive', not {mode!r}")
        extra: dict[str, Any] = dict(options.get("extra_files") or {})
        if isinstance(obj, (str, Path)):
            path = Path(obj)
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist")
            if not is_torchscript_archive(path):
                raise UnknownFormatError(
                    f"{path} is not a TorchScript archive (no data.pkl and code/ inside)"
                )
            extra = dict.fromkeys(_extra_file_names(path), "")
            try:
                module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)  # type: ignore[no-untyped-call]
            except Exception as exc:
                raise PayloadMismatchError(
                    f"{path} could not be loaded as TorchScript: {exc}"
                ) from exc
        elif isinstance(obj, torch.jit.ScriptModule):
            module = obj
        else:
            raise UnknownFormatError(
                f"the torchscript format packs a ScriptModule or an archive path, not a {type(obj).__name__}"
            )
        weights = _weights(module)
        tensors = {k: t for k, (t, _) in weights.items()}
        draft = Draft(self.name, self.version)
        fallback = None
        if mode == "section":
            builder = TensorSectionBuilder()
            try:
                add_tensors(builder, tensors.items())
                with _swapped(module, {k: _placeholder(t) for k, t in tensors.items()}):
                    archive = self._save(module, extra)
            except (RuntimeError, PayloadMismatchError) as exc:
                # Some modules cannot have their tensors swapped out (dtypes the
                # section lacks, attributes TorchScript will not retype): keep
                # TorchScript's own archive, weights and all, and say so.
                fallback = f"{type(exc).__name__}: {exc}"[:500]
                mode = "archive"
            else:
                draft.add_tensor_section(builder)
        if mode == "archive":
            archive = self._save(module, extra)
        traced = isinstance(module, torch.jit.TracedModule)  # type: ignore[attr-defined]
        kind = "traced" if traced else "scripted"
        blob = draft.add_blob("archive", ARCHIVE_MEDIA_TYPE, BytesSource(archive))
        draft.payload = {
            "layout": 1,
            "archive": {"blob": blob},
            "weights": mode,
            "kind": kind,
            "tensors": {
                k: {"parameter": is_param, "requires_grad": bool(t.requires_grad)}
                for k, (t, is_param) in weights.items()
            }
            if mode == "section"
            else {},
            "extra_files": sorted(extra),
        }
        if fallback is not None:
            draft.payload["weights_reason"] = fallback
        fill_common(
            draft,
            parameters={k: t for k, (t, p) in weights.items() if p},
            stored=tensors,
            signature=_signature(module, options.get("example_inputs")),
            # TorchScript code can name devices literally (traced on a GPU, it usually
            # does): a module built on CUDA is only promised to run on CUDA.
            device_kind="cuda" if any(t.is_cuda for t in tensors.values()) else "any",
        )
        draft.metadata.update(options.get("metadata") or {})
        return draft

    @staticmethod
    def _save(module: Any, extra: Mapping[str, Any]) -> bytes:
        buf = io.BytesIO()
        torch.jit.save(module, buf, _extra_files=dict(extra))
        return buf.getvalue()

    def load(self, source: ContainerSource, *, device: str = "cpu", **options: Any) -> Any:
        """The ScriptModule on ``device``. ``extra_files``: a dict filled with the stored extra files."""
        dev = resolve_device(device)
        payload = _check_payload(source)
        section = payload["weights"] == "section"
        if section:
            names = set(payload["tensors"])
            stored = {e.name for e in source.manifest.tensors} | set(source.manifest.tensor_aliases)
            missing, extra_t = sorted(names - stored), sorted(stored - names)
            if missing or extra_t:
                raise PayloadMismatchError(
                    "the weights disagree with the module: "
                    + "; ".join(
                        p
                        for p in (
                            f"missing tensor(s) {', '.join(map(repr, missing[:5]))}"
                            if missing
                            else "",
                            f"unexpected tensor(s) {', '.join(map(repr, extra_t[:5]))}"
                            if extra_t
                            else "",
                        )
                        if p
                    ),
                    hint="the container is inconsistent; push the module again",
                )
        # Weights stream (verified) on a worker while the archive is verified and loaded here.
        loading = BackgroundLoad(source, dev, **stream_options(options)) if section else None
        tensors: dict[str, torch.Tensor] = {}
        try:
            archive = read_blob(
                source, payload["archive"]["blob"], max_size=_MAX_ARCHIVE
            )  # verified
            if not is_torchscript_archive(archive):
                raise PayloadMismatchError(
                    f"blob {payload['archive']['blob']} is not a TorchScript archive",
                    hint="the container is damaged or was not written by modelvault's torchscript format",
                )
            extra = dict.fromkeys(payload["extra_files"], "")
            try:
                module = torch.jit.load(io.BytesIO(archive), map_location=dev, _extra_files=extra)  # type: ignore[no-untyped-call]
            except Exception as exc:
                raise PayloadMismatchError(
                    f"blob {payload['archive']['blob']} could not be loaded as TorchScript: {exc}"
                ) from exc
            if loading is not None:
                tensors = loading.result()
                loading = None
                self._install(module, payload["tensors"], tensors)
        except BaseException as exc:
            if loading is not None:
                loading.discard()
            tensors = {}
            release(exc, dev)
            raise
        out_extra = options.get("extra_files")
        if isinstance(out_extra, dict):
            out_extra.update(extra)
        return module

    @staticmethod
    def _install(module: Any, info: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        problems = []
        values: dict[str, torch.Tensor] = {}
        for path, meta in info.items():
            t = tensors[path]
            if not _PATH_RE.match(path):
                problems.append(f"{path!r:.80} is not an attribute path")
                continue
            try:
                owner, leaf = _owner(module, path)
                ph = getattr(owner, leaf)
            except AttributeError:
                problems.append(f"the module has no attribute {path!r}")
                continue
            if not isinstance(owner, torch.jit.ScriptModule):
                problems.append(f"{path!r} does not belong to a submodule")
                continue
            if not isinstance(ph, torch.Tensor):
                problems.append(f"{path!r} is not a tensor in the module")
                continue
            if tuple(ph.shape) != tuple(t.shape) or ph.dtype != t.dtype:
                problems.append(
                    f"tensor {path!r}: the module expects {to_name(ph.dtype)}{list(ph.shape)}, "
                    f"the weights hold {to_name(t.dtype)}{list(t.shape)}"
                )
                continue
            values[path] = (
                torch.nn.Parameter(t, bool(meta["requires_grad"])) if meta["parameter"] else t
            )
        if problems:
            raise PayloadMismatchError(
                "the weights disagree with the module: " + "; ".join(problems[:8]),
                hint="the container is inconsistent; push the module again",
            )
        # Tied tensors must stay one object: reuse the Parameter made for the first name.
        made: dict[int, torch.Tensor] = {}
        for path, v in values.items():
            key = id(tensors[path])
            v = made.setdefault(key, v)
            owner, leaf = _owner(module, path)
            private.set_script_attribute(owner, leaf, v)

    def export_native(self, source: ContainerSource, dest: Path, **options: Any) -> Path:
        """Write a TorchScript archive with ``torch.jit.save`` (extra files included)."""
        extra: dict[str, Any] = {}
        module = self.load(source, device="cpu", extra_files=extra)
        dest = Path(dest)
        torch.jit.save(module, str(dest), _extra_files=extra)
        return dest

    def validate(self, source: ContainerSource) -> None:
        """Payload well formed, its archive blob a zip, its tensor list the stored tensors.

        Nothing of the archive is unpickled here: TorchScript is code, and it
        runs only when :meth:`load` deserializes it after every byte verified.
        """
        super().validate(source)
        payload = _check_payload(source)
        m = source.manifest
        if payload["weights"] == "section":
            names = set(payload["tensors"])
            stored = {e.name for e in m.tensors} | set(m.tensor_aliases)
            if names != stored:
                missing, extra_t = sorted(names - stored), sorted(stored - names)
                raise PayloadMismatchError(
                    "the weights disagree with the module: "
                    f"missing {[n[:80] for n in missing[:5]]}, unexpected {[n[:80] for n in extra_t[:5]]}",
                    hint="the container is inconsistent; push the model again",
                )
        # A sanity check on the first bytes, not a trust decision: load verifies
        # the whole archive before torch reads it.
        loc = source.locate(payload["archive"]["blob"])
        with loc.path.open("rb") as f:
            f.seek(loc.offset)
            head = f.read(min(4, loc.size))
        if head != b"PK\x03\x04":
            raise PayloadMismatchError(
                "the torchscript archive blob is not a zip archive",
                hint="the container is damaged or was assembled by hand",
            )

    def native_suffix(self, source: ContainerSource) -> str:
        return ".pt"


def _check_payload(source: ContainerSource) -> dict[str, Any]:
    p = dict(source.manifest.payload)
    ok = (
        p.get("layout") == 1
        and isinstance(p.get("archive"), dict)
        and type(p["archive"].get("blob")) is int
        and 0 <= p["archive"]["blob"] < len(source.manifest.blobs)
        and p.get("weights") in ("section", "archive")
        and isinstance(p.get("tensors"), dict)
        and all(
            isinstance(v, dict)
            and isinstance(v.get("parameter"), bool)
            and isinstance(v.get("requires_grad"), bool)
            for v in p["tensors"].values()
        )
        and isinstance(p.get("extra_files"), list)
        and all(isinstance(n, str) for n in p["extra_files"])
    )
    if not ok:
        raise PayloadMismatchError(
            "the torchscript payload is malformed (expected layout 1 with archive, weights, tensors, extra_files)",
            hint="the container was written by a newer modelvault or is damaged",
        )
    return p
