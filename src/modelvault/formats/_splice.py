"""Byte-identical native files, rebuilt from a skeleton blob and stored tensors.

A file pushed from disk (a ``.safetensors``, a TorchScript archive) is mostly
tensor bytes that the tensor section already holds. Its *recipe* keeps the
rest: a skeleton blob with every byte that is not a stored tensor (headers,
zip records, code) and a list of pieces that says, in file order, where each
run of bytes comes from::

    "native": {
      "skeleton": <blob index>,
      "pieces": [412, "w", "b", 128, ...],   # int n: the next n skeleton bytes;
                                             # str: the bytes of that tensor (alias or name)
      "size": <file size>,
      "sha256": "<hex digest of the file>",
    }

Writing it back needs no torch: each blob used is hashed against its digest
through a read-only mapping, the pieces are copied out of the mappings into a
temporary file, and the file's SHA-256 must equal the one recorded at push
before it is renamed into place.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..digest import damaged, new_hasher, parse_digest
from ..errors import FormatError, IntegrityError, PayloadMismatchError
from .container import BytesSource, ContainerSource, Draft, create_temp, make_parents, remove_dirs

__all__ = ["SKELETON_MEDIA_TYPE", "add_recipe", "check_recipe", "write_recipe"]

SKELETON_MEDIA_TYPE = "application/vnd.modelvault.native-skeleton"
_HEX = frozenset("0123456789abcdef")


def add_recipe(draft: Draft, path: Path, runs: Sequence[tuple[int, int, str]]) -> dict[str, Any]:
    """The ``native`` payload entry for the file at ``path``, adding its skeleton blob to ``draft``.

    ``runs`` are ``(offset, length, tensor name)``: byte ranges of the file that
    equal the stored bytes of that tensor. They may come in any order; they must
    not overlap.
    """
    pieces: list[int | str] = []
    skeleton = bytearray()
    sha = hashlib.sha256()
    pos = 0
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size

        def take(n: int, keep: bool) -> None:
            # The file is read once, in order: skeleton bytes are kept, tensor bytes only hashed.
            while n > 0:
                chunk = f.read(min(n, 1 << 24))
                if not chunk:
                    raise PayloadMismatchError(f"{path} changed while it was being pushed")
                sha.update(chunk)
                if keep:
                    skeleton.extend(chunk)
                n -= len(chunk)

        for offset, length, name in sorted(runs):
            if offset < pos or offset + length > size:
                raise PayloadMismatchError(
                    f"{path}: tensor {name!r} overlaps another or the file's end"
                )
            if offset > pos:
                pieces.append(offset - pos)
                take(offset - pos, True)
            pieces.append(name)
            take(length, False)
            pos = offset + length
        if pos < size:
            pieces.append(size - pos)
            take(size - pos, True)
    blob = draft.add_blob("native-skeleton", SKELETON_MEDIA_TYPE, BytesSource(bytes(skeleton)))
    return {
        "skeleton": blob,
        "pieces": pieces,
        "size": size,
        "sha256": sha.hexdigest(),
    }


def check_recipe(source: ContainerSource, recipe: Any) -> dict[str, Any]:
    """``recipe`` checked against the manifest; :class:`PayloadMismatchError` naming what is wrong."""
    m = source.manifest
    ok = (
        isinstance(recipe, dict)
        and isinstance(recipe.get("skeleton"), int)
        and 0 <= recipe["skeleton"] < len(m.blobs)
        and isinstance(recipe.get("pieces"), list)
        and isinstance(recipe.get("size"), int)
        and isinstance(recipe.get("sha256"), str)
        and len(recipe["sha256"]) == 64
        and set(recipe["sha256"]) <= _HEX
    )
    if not ok:
        raise PayloadMismatchError(
            "the native file recipe is malformed (expected skeleton, pieces, size, sha256)",
            hint="the container was written by a newer modelvault or is damaged",
        )
    entries = {e.name: e for e in m.tensors}
    skeleton_used = total = 0
    for p in recipe["pieces"]:
        if isinstance(p, bool) or not isinstance(p, (int, str)) or (isinstance(p, int) and p < 0):
            raise PayloadMismatchError(f"the native file recipe has a bad piece {p!r:.40}")
        if isinstance(p, int):
            skeleton_used += p
            total += p
            continue
        e = entries.get(m.tensor_aliases.get(p, p))
        if e is None:
            raise PayloadMismatchError(
                f"the native file recipe names tensor {p!r:.80}, which is not stored"
            )
        total += e.nbytes
    if skeleton_used != m.blobs[recipe["skeleton"]].size or total != recipe["size"]:
        raise PayloadMismatchError(
            f"the native file recipe does not add up: {total} bytes of {recipe['size']}, "
            f"{skeleton_used} skeleton bytes of {m.blobs[recipe['skeleton']].size}"
        )
    return dict(recipe)


class _Mapped:
    """Read-only, verified mappings of the blobs a recipe uses, opened once each.

    A mapping is unmapped when the last view of it goes (closing it while a
    slice is alive would fail), so nothing here closes explicitly.
    """

    def __init__(self, source: ContainerSource) -> None:
        self._source = source
        self._views: dict[int, memoryview] = {}

    def __getitem__(self, index: int) -> memoryview:
        if index not in self._views:
            self._views[index] = self._open(index)
        return self._views[index]

    def _open(self, index: int) -> memoryview:
        ref = self._source.manifest.blobs[index]
        if ref.size == 0:
            return memoryview(b"")
        loc = self._source.locate(index)
        where = str(loc.path)
        start = loc.offset - loc.offset % mmap.ALLOCATIONGRANULARITY
        with open(loc.path, "rb") as f:
            have = os.fstat(f.fileno()).st_size - loc.offset
            if have < ref.size:
                raise IntegrityError(
                    f"blob {ref.digest} is truncated: {max(have, 0)} of {ref.size} bytes in {where}",
                    expected=ref.digest,
                    actual=f"{max(have, 0)} bytes",
                    where=where,
                )
            mm = mmap.mmap(
                f.fileno(), loc.offset - start + ref.size, access=mmap.ACCESS_READ, offset=start
            )
        view = memoryview(mm)[loc.offset - start : loc.offset - start + ref.size]
        algo, _ = parse_digest(ref.digest)
        hasher = new_hasher(algo)
        hasher.update(view)
        actual = hasher.digest_str()
        if actual != ref.digest:
            raise damaged(ref.digest, actual, where)
        return view


def _runs(
    source: ContainerSource, recipe: Mapping[str, Any], blobs: _Mapped
) -> Iterator[memoryview]:
    m = source.manifest
    entries = {e.name: e for e in m.tensors}
    skeleton = blobs[recipe["skeleton"]]
    pos = 0
    for p in recipe["pieces"]:
        if isinstance(p, int):
            yield skeleton[pos : pos + p]
            pos += p
        else:
            e = entries[m.tensor_aliases.get(p, p)]
            yield blobs[e.blob][e.offset : e.offset + e.nbytes]


def write_recipe(source: ContainerSource, recipe: Any, dest: Path) -> Path:
    """Write the file ``recipe`` describes to ``dest`` atomically; returns ``dest``.

    Raises :class:`IntegrityError` when a blob does not match its digest and
    :class:`FormatError` when the result is not the file that was pushed.
    """
    recipe = check_recipe(source, recipe)
    dest = Path(dest)
    created = make_parents(dest.parent)
    fd, tmp = create_temp(dest.parent, f".{dest.name}.")
    try:
        sha = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for run in _runs(source, recipe, _Mapped(source)):
                sha.update(run)
                out.write(run)
            out.flush()
            os.fsync(out.fileno())
        if sha.hexdigest() != recipe["sha256"]:
            raise FormatError(
                f"the rebuilt file's sha256 is {sha.hexdigest()}, the pushed file's was {recipe['sha256']}",
                hint="the container's recipe is inconsistent; push the file again",
            )
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        remove_dirs(created)
        raise
    return dest
