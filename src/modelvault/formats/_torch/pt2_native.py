"""``.pt2`` files in and out of the exported_program format, with no pickle and no torch.export.load.

In: :func:`open_pt2` reads the archive (:mod:`.pt2_archive`), checks its
program (:mod:`.graph_check`), wraps the raw weight storages as tensors and
rebuilds the program around them through the checked graph path.

Out is torch-free: :func:`.pt2_archive.write_pt2`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..manifest import contiguous_strides
from . import _export_private as private
from .dtypes import from_name
from .pt2_archive import Pt2Archive, layout, read_pt2

__all__ = ["OpenedPt2", "open_pt2"]

SD = "state_dict/"
CONST = "constants/"


@dataclass
class OpenedPt2:
    program: torch.export.ExportedProgram
    archive: Pt2Archive

    def layout(self) -> tuple[list[list[Any]], list[tuple[int, int]]]:
        """Segments and verbatim ranges; weight storages stored whole are referenced, not copied."""
        whole: dict[str, str] = {}
        for t in self.archive.tensors:
            _, nbytes, compressed = self.archive.members[t.member]
            numel = 1
            for d in t.sizes:
                numel *= d
            item = torch.empty((), dtype=from_name(t.dtype)).element_size()
            # A compressed member (an archive zipped again) is kept verbatim.
            if (
                nbytes
                and not compressed
                and t.member not in whole
                and t.storage_offset == 0
                and tuple(t.strides) == contiguous_strides(t.sizes)
                and numel * item == nbytes
            ):
                whole[t.member] = (SD if t.kind == "state_dict" else CONST) + t.fqn
        return layout(self.archive, whole)

    def verbatim(self) -> bytes:
        _, kept = self.layout()
        out = bytearray()
        with self.archive.path.open("rb") as f:
            for start, size in kept:
                f.seek(start)
                out += f.read(size)
        return bytes(out)


def open_pt2(path: str | Path) -> OpenedPt2:
    """The ExportedProgram in a ``.pt2``, its program checked before torch parses it."""
    arc = read_pt2(path)
    storages: dict[str, torch.Tensor] = {}
    import zipfile

    with zipfile.ZipFile(arc.path) as z:
        for t in arc.tensors:
            if t.member not in storages:
                data = bytearray(z.read(t.member))
                storages[t.member] = (
                    torch.frombuffer(data, dtype=torch.uint8)
                    if data
                    else torch.empty(0, dtype=torch.uint8)
                )
    sd: dict[str, torch.Tensor] = {}
    consts: dict[str, torch.Tensor] = {}
    for t in arc.tensors:
        dtype = from_name(t.dtype)
        base = storages[t.member]
        if base.numel() == 0:
            view = torch.zeros(t.sizes, dtype=dtype)
        else:
            view = torch.as_strided(base.view(dtype), t.sizes, t.strides, t.storage_offset)
        if t.kind == "state_dict":
            sd[t.fqn] = torch.nn.Parameter(view, t.requires_grad) if t.is_param else view
        else:
            consts[t.fqn] = view
    ep = private.deserialize_graph(arc.graph, sd, consts)
    return OpenedPt2(ep, arc)
