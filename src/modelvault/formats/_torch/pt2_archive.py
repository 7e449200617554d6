"""A ``.pt2`` archive from ``torch.export.save``, read without torch and without pickle.

torch 2.13 writes (``torch/export/pt2_archive/_package.py``), under one root
folder, uncompressed and 64-byte aligned:

* ``models/model.json``: the program (checked by :mod:`.graph_check`);
* ``data/weights/model_weights_config.json`` and
  ``data/constants/model_constants_config.json``: per FQN a ``path_name``, whether
  it is a parameter, whether it is pickled, and its tensor meta (dtype, sizes,
  strides, storage offset);
* ``data/weights/weight_<i>``, ``data/constants/tensor_<i>``: one untyped
  storage each, raw little-endian bytes;
* ``data/sample_inputs/model.pt``: a pickle (``torch.save``) of the example
  inputs; ``archive_format``, ``archive_version``, ``byteorder``, ``.data/*``.

``torch.export.load`` unpickles the sample inputs and any pickled weight,
retrying with ``weights_only=False`` when the safe load fails. Here nothing is
unpickled: the sample inputs are never parsed, and a weight, constant or
custom object that is pickled is refused.

For a byte-identical round trip, :func:`layout` splits the file into the
members stored elsewhere (the program JSON, the weight storages) and the rest,
kept verbatim; :func:`assemble` joins them back.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import FormatError, IntegrityError, PayloadMismatchError, UnknownFormatError
from ..container import ContainerSource, create_temp, read_blob
from ..manifest import DTYPE_SIZES
from .graph_check import SCALAR_TYPES

__all__ = [
    "ArchiveTensor",
    "Pt2Archive",
    "assemble",
    "check_segments",
    "layout",
    "read_pt2",
    "write_pt2",
]

_MAX_CONFIG = 256 * 1024 * 1024
_MAX_MEMBERS = 1_000_000
_STRIDED = 7  # schema.Layout.Strided
_PATH_NAME = re.compile(r"(weight|tensor)_[0-9]{1,9}")


@dataclass(frozen=True)
class ArchiveTensor:
    """One weight or constant: a strided view of the storage in ``member``."""

    kind: str  # "state_dict" or "constants"
    fqn: str
    is_param: bool
    requires_grad: bool
    dtype: str
    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    storage_offset: int
    member: str


@dataclass
class Pt2Archive:
    path: Path
    root: str
    graph: bytes
    tensors: list[ArchiveTensor] = field(default_factory=list)
    #: member name -> (offset of its data in the file, stored size, compressed?)
    members: dict[str, tuple[int, int, bool]] = field(default_factory=dict)
    size: int = 0
    sha256: str = ""

    @property
    def graph_member(self) -> str:
        return f"{self.root}models/model.json"


def _bad(path: Path, what: str) -> PayloadMismatchError:
    return PayloadMismatchError(
        f"{path.name}: {what}", hint="only archives written by torch.export.save are read"
    )


def _data_offsets(path: Path, z: zipfile.ZipFile) -> dict[str, tuple[int, int, bool]]:
    """Where each member's data starts (after its local header), its size, whether compressed."""
    out: dict[str, tuple[int, int, bool]] = {}
    with path.open("rb") as f:
        for info in z.infolist():
            f.seek(info.header_offset)
            head = f.read(30)
            if len(head) != 30 or head[:4] != b"PK\x03\x04":
                raise _bad(path, f"member {info.filename!r:.80} has no local header")
            name_len, extra_len = struct.unpack("<HH", head[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            out[info.filename] = (
                start,
                info.compress_size,
                info.compress_type != zipfile.ZIP_STORED,
            )
    return out


def _config(path: Path, z: zipfile.ZipFile, name: str) -> dict[str, Any]:
    info = z.getinfo(name)
    if info.file_size > _MAX_CONFIG:
        raise _bad(path, f"{name} is {info.file_size} bytes")
    try:
        doc = json.loads(z.read(name))
    except (ValueError, RecursionError) as exc:
        raise _bad(path, f"{name} is not JSON ({str(exc)[:60]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise _bad(path, f"{name} has no config map")
    cfg: dict[str, Any] = doc["config"]
    return cfg


def _as_ints(path: Path, seq: Any, where: str) -> tuple[int, ...]:
    if not isinstance(seq, list):
        raise _bad(path, f"{where} must be a list")
    out = []
    for s in seq:
        v = s.get("as_int") if isinstance(s, dict) and set(s) == {"as_int"} else None
        if type(v) is not int or not 0 <= v < 1 << 63:
            raise _bad(path, f"{where} holds {s!r:.60}; only concrete sizes are stored")
        out.append(v)
    return tuple(out)


def _tensor(
    path: Path, kind: str, fqn: str, meta: Any, base: str, sizes: dict[str, int]
) -> ArchiveTensor:
    where = f"{kind} {fqn!r:.80}"
    if not isinstance(meta, dict) or set(meta) - {
        "path_name",
        "is_param",
        "use_pickle",
        "tensor_meta",
    }:
        raise _bad(path, f"{where}: malformed entry")
    if meta.get("use_pickle") is not False:
        raise _bad(
            path,
            f"{where} is pickled (a tensor subclass or custom object); pickles are not loaded",
        )
    name = meta.get("path_name")
    if not isinstance(name, str) or not _PATH_NAME.fullmatch(name):
        raise _bad(path, f"{where}: path_name {name!r:.60} is not a raw tensor file")
    if base + name not in sizes:
        raise _bad(path, f"{where}: member {base + name} is missing")
    tm = meta.get("tensor_meta")
    if not isinstance(tm, dict):
        raise _bad(path, f"{where}: no tensor meta")
    code = tm.get("dtype")
    dtype = SCALAR_TYPES.get(code) if isinstance(code, int) and not isinstance(code, bool) else None
    if dtype is None or dtype not in DTYPE_SIZES:
        raise _bad(path, f"{where}: dtype {tm.get('dtype')!r:.20} is not stored")
    if tm.get("layout", _STRIDED) != _STRIDED:
        raise _bad(path, f"{where}: only strided tensors are stored")
    shape = _as_ints(path, tm.get("sizes"), f"{where} sizes")
    strides = _as_ints(path, tm.get("strides"), f"{where} strides")
    (offset,) = _as_ints(path, [tm.get("storage_offset")], f"{where} storage_offset")
    if len(shape) != len(strides) or len(shape) > 64:
        raise _bad(path, f"{where}: sizes and strides differ in length")
    item = DTYPE_SIZES[dtype]
    nbytes = sizes[base + name]
    span = 0 if 0 in shape else offset + 1 + sum((d - 1) * s for d, s in zip(shape, strides))
    if nbytes % item or span * item > nbytes:
        raise _bad(path, f"{where}: its view reaches past the {nbytes} bytes of {name}")
    return ArchiveTensor(
        kind=kind,
        fqn=fqn,
        is_param=bool(meta.get("is_param")),
        requires_grad=bool(tm.get("requires_grad")),
        dtype=dtype,
        sizes=shape,
        strides=strides,
        storage_offset=offset,
        member=base + name,
    )


def read_pt2(path: str | Path) -> Pt2Archive:
    """The program JSON and weight layout of a ``.pt2``; nothing is unpickled or evaluated."""
    path = Path(path)
    try:
        z = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise UnknownFormatError(f"{path} is not a .pt2 archive ({exc})") from None
    with z:
        names = z.namelist()
        if len(names) > _MAX_MEMBERS:
            raise _bad(path, f"{len(names)} members")
        if any(i.flag_bits & 0x1 for i in z.infolist()):
            raise _bad(path, "encrypted members")
        models = [n for n in names if re.fullmatch(r"[^/]+/models/[^/]+\.json", n)]
        if len(models) != 1 or not models[0].endswith("/models/model.json"):
            raise _bad(path, "expected exactly one program, models/model.json")
        root = models[0][: -len("models/model.json")]
        for legacy in (f"{root}data/weights/model.pt", f"{root}data/constants/model.pt"):
            if legacy in names:
                raise _bad(
                    path,
                    "weights in the legacy pickled layout; save it again with torch.export.save",
                )
        order = f"{root}byteorder"
        if order in names and z.read(order).strip() != b"little":
            raise _bad(path, "big-endian weights are not read")
        members = _data_offsets(path, z)
        sizes = {i.filename: i.file_size for i in z.infolist()}
        graph = z.read(models[0])
        tensors: list[ArchiveTensor] = []
        for kind, cfg_name, base in (
            ("state_dict", "data/weights/model_weights_config.json", "data/weights/"),
            ("constants", "data/constants/model_constants_config.json", "data/constants/"),
        ):
            full = root + cfg_name
            if full not in names:
                raise _bad(path, f"{cfg_name} is missing")
            for fqn, meta in _config(path, z, full).items():
                tensors.append(_tensor(path, kind, fqn, meta, root + base, sizes))
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return Pt2Archive(
        path=path,
        root=root,
        graph=graph,
        tensors=tensors,
        members=members,
        size=path.stat().st_size,
        sha256=h.hexdigest(),
    )


def layout(
    archive: Pt2Archive, stored_whole: dict[str, str]
) -> tuple[list[list[Any]], list[tuple[int, int]]]:
    """Segments that rebuild the file, and the byte ranges kept verbatim.

    ``stored_whole`` maps a member name to the tensor-section name whose bytes
    are exactly that member's bytes. A segment is ``["raw", n]`` (the next ``n``
    verbatim bytes), ``["graph"]`` or ``["tensor", name]``.
    """
    refs: list[tuple[int, int, list[Any]]] = []
    start, size, _ = archive.members[archive.graph_member]
    if not archive.members[archive.graph_member][2]:
        refs.append((start, size, ["graph"]))
    for member, section in stored_whole.items():
        start, size, _ = archive.members[member]
        refs.append((start, size, ["tensor", section]))
    refs.sort()
    segments: list[list[Any]] = []
    kept: list[tuple[int, int]] = []
    pos = 0
    for start, size, seg in refs:
        if start < pos:
            raise _bad(archive.path, "members overlap; torch.export.save never writes that")
        if start > pos:
            segments.append(["raw", start - pos])
            kept.append((pos, start - pos))
        segments.append(seg)
        pos = start + size
    if archive.size > pos:
        segments.append(["raw", archive.size - pos])
        kept.append((pos, archive.size - pos))
    return segments, kept


def check_segments(segments: Any, raw_size: int, tensor_names: set[str]) -> None:
    """Refuse a layout that does not consume exactly the verbatim blob or names unknown tensors."""
    if not isinstance(segments, list) or len(segments) > 2 * _MAX_MEMBERS + 2:
        raise FormatError("the .pt2 layout must be a list of segments")
    total = 0
    for i, seg in enumerate(segments):
        ok = isinstance(seg, list) and seg and seg[0] in ("raw", "graph", "tensor")
        if ok and seg[0] == "raw":
            ok = len(seg) == 2 and type(seg[1]) is int and seg[1] > 0
            total += seg[1] if ok else 0
        elif ok and seg[0] == "graph":
            ok = len(seg) == 1
        elif ok:
            ok = len(seg) == 2 and isinstance(seg[1], str) and seg[1] in tensor_names
        if not ok:
            raise FormatError(f"the .pt2 layout's segment {i} ({seg!r:.60}) is malformed")
    if total != raw_size:
        raise FormatError(f"the .pt2 layout uses {total} verbatim bytes; its blob holds {raw_size}")


def assemble(
    segments: list[list[Any]],
    raw: Callable[[int], bytes],
    graph: Callable[[], bytes],
    tensor: Callable[[str], bytes],
) -> Iterator[bytes]:
    """The original file's bytes, in order, from the pieces :func:`layout` named."""
    for seg in segments:
        if seg[0] == "raw":
            yield raw(seg[1])
        elif seg[0] == "graph":
            yield graph()
        else:
            yield tensor(seg[1])


def write_pt2(
    source: ContainerSource, dest: Path, archive: dict[str, Any], graph_blob: int
) -> Path:
    """Reassemble the pushed ``.pt2`` from its stored pieces; refuses if its SHA-256 differs."""
    m = source.manifest
    raw = read_blob(source, archive["blob"])
    graph = read_blob(source, graph_blob)
    entries = {e.name: e for e in m.tensors}
    for alias, target in m.tensor_aliases.items():
        entries[alias] = entries[target]
    sections: dict[int, bytes] = {}
    pos = 0

    def take_raw(n: int) -> bytes:
        nonlocal pos
        pos += n
        return raw[pos - n : pos]

    def tensor(name: str) -> bytes:
        e = entries[name]
        if e.blob not in sections:
            sections[e.blob] = read_blob(source, e.blob)
        return sections[e.blob][e.offset : e.offset + e.nbytes]

    dest = Path(dest)
    fd, tmp = create_temp(dest.parent, dest.name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f:
            for piece in assemble(archive["segments"], take_raw, lambda: graph, tensor):
                h.update(piece)
                f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        if h.hexdigest() != archive["sha256"]:
            raise IntegrityError(
                f"the reassembled .pt2 does not match the pushed file (sha256 {h.hexdigest()})",
                expected=archive["sha256"],
                actual=h.hexdigest(),
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest
