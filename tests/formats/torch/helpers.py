"""Building deliberately broken containers for the torch format tests."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from modelvault.formats._torch.section import add_tensors
from modelvault.formats.container import (
    TENSORS_MEDIA_TYPE,
    BytesSource,
    DirectorySource,
    Draft,
    DraftBlob,
    TensorSectionBuilder,
    write_directory,
)


def replace_section(draft: Draft, tensors: Iterable[tuple[str, torch.Tensor]]) -> Draft:
    """Swap the draft's tensor section (blob 0) for one holding ``tensors``."""
    assert draft.blobs[0].media_type == TENSORS_MEDIA_TYPE
    b = TensorSectionBuilder()
    aliases = add_tensors(b, tensors)
    source, entries = b.build(0)
    draft.blobs[0] = DraftBlob("tensors", TENSORS_MEDIA_TYPE, source)
    draft.tensors = entries
    draft.tensor_aliases = dict(aliases)
    return draft


def replace_blob(draft: Draft, role: str, data: bytes) -> Draft:
    for i, blob in enumerate(draft.blobs):
        if blob.role == role:
            draft.blobs[i] = DraftBlob(role, blob.media_type, BytesSource(data))
            return draft
    raise AssertionError(f"no blob with role {role}")


def corrupt_blob(source: DirectorySource, index: int, at: int = 0) -> None:
    """Flip one byte of a written blob in place (its digest no longer matches)."""
    loc = source.locate(index)
    path = Path(loc.path)
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def write(draft: Draft, where: Path) -> DirectorySource:
    return write_directory(draft, where)
