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

The section holds tensors that own their storage (tied ones once). A module
with any other tensor (a view into a larger storage, two tensors over one
storage, a dtype the section lacks such as the quantized ones) keeps its
archive whole, so torch gets back exactly the storages it wrote.

An archive pushed from a file also gets ``"native"``, the recipe of that file
(:mod:`modelvault.formats._splice`): a pull writes the very same bytes,
assembled from the stored tensors and the rest of the zip, without torch.
A module pushed in archive form is pulled as its stored archive, also without
torch. Only a live module pushed with its weights in the section is pulled by
loading it and calling ``torch.jit.save``.
"""

from __future__ import annotations

import io
import mmap
import os
import re
import struct
import sys
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..digest import digest_bytes
from ..errors import InvalidArgumentError, PayloadMismatchError, UnknownFormatError
from . import _splice
from .base import FormatPlugin, not_a_file
from .container import (
    BytesSource,
    ContainerSource,
    Draft,
    FileSource,
    TensorSectionBuilder,
    create_temp,
    read_blob,
)

# torch is imported where it is used, so that writing a stored archive back
# (``export_native``) runs without it.
if TYPE_CHECKING:
    import torch

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
    import torch

    # One element of storage that still carries the shape and dtype, for checking on load.
    return torch.zeros((), dtype=t.dtype).expand(t.shape)


def _section_misfit(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """Why these tensors cannot go to the section exactly, or None when they can."""
    from ._torch.dtypes import to_name
    from ._torch.section import owns_storage

    by_storage: dict[tuple[str, int], tuple[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        if t.is_quantized:
            return f"tensor {name!r} is quantized ({t.dtype})"
        to_name(t.dtype)  # raises, naming the dtype, when the section has no such dtype
        if t.device.type == "meta" or t.numel() == 0:
            continue
        key = (t.device.type, t.untyped_storage().data_ptr())
        seen = by_storage.get(key)
        if seen is not None:
            if seen[1] is t or _same_view(seen[1], t):
                continue  # tied: one tensor under two names
            return f"tensors {seen[0]!r} and {name!r} share one storage"
        by_storage[key] = (name, t)
        if not owns_storage(t):
            return f"tensor {name!r} is a view into a larger storage (offset {t.storage_offset()}, strides {list(t.stride())})"
    return None


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.storage_offset() == b.storage_offset()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
    )


def _zip_storage_runs(
    path: Path, tensors: Mapping[str, torch.Tensor]
) -> list[tuple[int, int, str]]:
    """Byte ranges of the archive's storage records that equal one of ``tensors``' bytes."""
    from ._torch.section import raw_bytes

    by_digest: dict[str, str] = {}
    for name, t in tensors.items():
        if t.numel():
            by_digest.setdefault(digest_bytes(memoryview(raw_bytes(t)[0])), name)
    runs: list[tuple[int, int, str]] = []
    with open(path, "rb") as f, zipfile.ZipFile(f) as z:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            for info in z.infolist():
                # torch.jit.save writes each storage uncompressed as <archive>/data/<key>.
                parts = info.filename.split("/")
                if not (len(parts) == 3 and parts[1] == "data" and parts[2].isdigit()):
                    continue
                if info.compress_type != zipfile.ZIP_STORED or info.file_size == 0:
                    continue
                head = mm[info.header_offset : info.header_offset + 30]
                if len(head) < 30 or head[:4] != b"PK\x03\x04":
                    continue
                name_len, extra_len = struct.unpack("<HH", head[26:30])
                start = info.header_offset + 30 + name_len + extra_len
                with memoryview(mm)[start : start + info.file_size] as member:
                    found = by_digest.get(digest_bytes(member))
                if found is not None:
                    runs.append((start, info.file_size, found))
        finally:
            mm.close()
    return runs


@contextmanager
def _swapped(module: Any, values: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily set attributes of a ScriptModule; always restores the originals."""
    from ._torch import _export_private as private

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
    import torch

    from ._torch.export_module import example_args
    from ._torch.signature import describe_value

    schema = module.forward.schema
    args = list(schema.arguments)[1:]  # a method's first argument is the module itself
    if example_inputs is not None:
        ex, kw = example_args(example_inputs)
        inputs = [describe_value(a.name, v) for a, v in zip(args, ex)]
        inputs += [describe_value(k, v) for k, v in kw.items()]
        with torch.no_grad():
            out = module(*ex, **kw)
        if isinstance(out, Mapping):
            outputs = [describe_value(str(k), v) for k, v in out.items()]
        else:
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
        torch = sys.modules.get("torch")  # not imported: obj cannot be a torch module
        return torch is not None and isinstance(obj, torch.jit.ScriptModule)

    def can_pack_path(self, path: Path) -> bool:
        return path.is_file() and is_torchscript_archive(path)

    def pack(self, obj: Any, **options: Any) -> Draft:
        """Pack a ScriptModule, a TorchScript archive path, or an ``nn.Module`` to script or trace.

        Options: ``extra_files`` (``{name: bytes|str}``, live modules only),
        ``weights`` (``"section"``, the default, or ``"archive"``),
        ``example_inputs`` (to record input and output shapes in the signature,
        and to trace an ``nn.Module``), ``method`` (for an ``nn.Module``:
        ``"script"``, ``"trace"``, or ``"auto"``, the default: script, else trace).
        """
        import torch

        from ._torch.section import add_tensors
        from ._torch.signature import fill_common

        mode = options.get("weights", "section")
        if mode not in ("section", "archive"):
            raise InvalidArgumentError(f"weights must be 'section' or 'archive', not {mode!r}")
        extra: dict[str, Any] = dict(options.get("extra_files") or {})
        path: Path | None = None
        if isinstance(obj, (str, Path)):
            path = Path(obj)
            if not path.is_file():
                raise not_a_file(path, "TorchScript")
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
        elif isinstance(obj, torch.nn.Module):
            from ._torch.export_module import to_script

            module = to_script(
                obj, options.get("example_inputs"), str(options.get("method", "auto"))
            )
        else:
            raise UnknownFormatError(
                "the torchscript format packs a ScriptModule, an nn.Module or an archive path, "
                f"not a {type(obj).__name__}"
            )
        weights = _weights(module)
        tensors = {k: t for k, (t, _) in weights.items()}
        draft = Draft(self.name, self.version)
        fallback = None
        if mode == "section":
            builder = TensorSectionBuilder()
            try:
                misfit = _section_misfit(tensors)
                if misfit is not None:
                    raise PayloadMismatchError(misfit)
                add_tensors(builder, tensors.items())
                with _swapped(module, {k: _placeholder(t) for k, t in tensors.items()}):
                    archive = self._save(module, extra)
            except (RuntimeError, PayloadMismatchError) as exc:
                # Some modules cannot have their tensors swapped out (dtypes the
                # section lacks, storages shared between tensors, attributes
                # TorchScript will not retype): keep TorchScript's own archive,
                # weights and all, and say so.
                fallback = f"{type(exc).__name__}: {exc}"[:500]
                mode = "archive"
            else:
                draft.add_tensor_section(builder)
        if mode == "archive":
            # From a file, the archive is that file: a pull gives back the same bytes.
            archive_source: Any = (
                FileSource(path) if path is not None else BytesSource(self._save(module, extra))
            )
        else:
            archive_source = BytesSource(archive)
        traced = isinstance(module, torch.jit.TracedModule)  # type: ignore[attr-defined]
        kind = "traced" if traced else "scripted"
        blob = draft.add_blob("archive", ARCHIVE_MEDIA_TYPE, archive_source)
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
        if path is not None and mode == "section":
            runs = _zip_storage_runs(path, {e.name: tensors[e.name] for e in draft.tensors})
            draft.payload["native"] = _splice.add_recipe(draft, path, runs)
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
        import torch

        buf = io.BytesIO()
        torch.jit.save(module, buf, _extra_files=dict(extra))
        return buf.getvalue()

    def load(self, source: ContainerSource, *, device: str = "cpu", **options: Any) -> Any:
        """The ScriptModule on ``device``. ``extra_files``: a dict filled with the stored extra files."""
        import torch

        from ._torch.device import resolve_device
        from ._torch.stream import BackgroundLoad, release, stream_options

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
        import torch

        from ._torch import _export_private as private
        from ._torch.dtypes import to_name

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
        """Write the TorchScript archive: the pushed file itself where there was one.

        A file pushed from disk comes back byte for byte; a module stored in
        archive form comes back as that archive; both without torch. A live
        module with section weights is loaded and written by ``torch.jit.save``.
        """
        payload = _check_payload(source)
        dest = Path(dest)
        if "native" in payload:
            return _splice.write_recipe(source, payload["native"], dest)
        if payload["weights"] == "archive":
            return _write_atomically(
                read_blob(source, payload["archive"]["blob"], max_size=_MAX_ARCHIVE), dest
            )
        import torch

        extra: dict[str, Any] = {}
        module = self.load(source, device="cpu", extra_files=extra)
        buf = io.BytesIO()
        torch.jit.save(module, buf, _extra_files=extra)
        return _write_atomically(buf.getvalue(), dest)

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


def _write_atomically(data: bytes, dest: Path) -> Path:
    fd, tmp = create_temp(dest.parent, f".{dest.name}.")
    try:
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


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
