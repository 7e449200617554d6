"""Where each tensor's bytes go: content-addressed blobs (container format 1.1).

A registry holds fine-tunes of one base, the same weights in several formats,
versions that change a few tensors: the unit that repeats is the tensor, in
whatever order and under whatever name a format gives it. So the layout is a
function of tensor *contents* only, never of names or order:

* each distinct content is stored once per container (two tensors with the
  same bytes name the same range);
* a content of at least :data:`STANDALONE_BYTES` is a blob of its own, so its
  blob digest is the digest of its bytes and any container naming it, in any
  format, reuses the stored blob;
* small contents are loose blobs too while a container has at most
  :data:`LOOSE_SMALL` of them (a small state dict stays exactly addressed:
  changing one 3 KB tensor stores 3 KB); beyond that they share packs, so a
  model with hundreds of biases and norms costs a handful of requests, not
  hundreds. Packs hold small contents in digest order, and a pack ends after
  each content whose digest's last byte is below 16 (1 in :data:`PACK_FANOUT`), after
  one in two once it holds :data:`PACK_SOFT` bytes, and at :data:`PACK_MAX`
  bytes regardless: boundaries come from the contents, so
  changing one small tensor rewrites the pack it leaves and the pack it joins
  (which may split in two): about 2 x 16 small tensors, not every pack after it.

Every offset in a blob is 4096-aligned, as in every tensor section.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .manifest import align

__all__ = [
    "LOOSE_SMALL",
    "PACK_FANOUT",
    "PACK_MAX",
    "PACK_SOFT",
    "STANDALONE_BYTES",
    "PlannedBlob",
    "plan",
]

#: Contents of at least this many bytes stand alone. At 64 KiB the 4 KiB
#: alignment of a pack would waste up to 6%, and one request per blob is cheap.
STANDALONE_BYTES = 64 * 1024
#: Up to this many distinct small contents per container stay loose blobs.
LOOSE_SMALL = 64
#: A pack ends after a content whose digest's last byte is below 256 / 16: 1 in 16.
PACK_FANOUT = 16
#: Past this size a pack ends after one content in 2 (still chosen by digest), so
#: long runs without a boundary are rare and forced cuts at PACK_MAX rarer still:
#: a forced cut moves when a content is added before it, and the run shifts.
PACK_SOFT = 256 * 1024
#: ... and at this size it ends regardless (a pack is read whole).
PACK_MAX = 1 << 20


@dataclass(frozen=True)
class PlannedBlob:
    """One blob of the layout: ``(offset, content index)`` per member, and its size."""

    members: tuple[tuple[int, int], ...]
    size: int


def _hex(digest: str) -> str:
    return digest.partition(":")[2]


def plan(contents: Sequence[tuple[str, int]]) -> tuple[list[PlannedBlob], list[tuple[int, int]]]:
    """Lay out distinct contents, given as ``(digest, nbytes)`` in first-seen order.

    Returns the blobs, in the order their first content was seen, and for each
    content its ``(blob index, offset)``.

        >>> blobs, where = plan([("blake3:aa", 1 << 20), ("blake3:bb", 8)])
        >>> [b.size for b in blobs], where
        ([1048576, 8], [(0, 0), (1, 0)])
    """
    small = [i for i, (_d, n) in enumerate(contents) if n < STANDALONE_BYTES]
    packed = set(small) if len(small) > LOOSE_SMALL else set()
    groups: list[list[tuple[int, int]]] = []
    group_of: dict[int, int] = {}
    for i in range(len(contents)):
        if i not in packed:
            group_of[i] = len(groups)
            groups.append([(0, i)])
    pos = 0
    current: list[tuple[int, int]] = []
    for i in sorted(packed, key=lambda i: contents[i][0]):
        digest, nbytes = contents[i]
        offset = align(pos) if nbytes else 0  # an empty tensor takes no bytes anywhere
        current.append((offset, i))
        group_of[i] = len(groups)
        if nbytes:
            pos = offset + nbytes
        # The cut looks at the digest's last byte: packs are sorted by its first
        # bytes, so those rise through a run and would put every cut up front.
        last = int(_hex(digest)[-2:] or "ff", 16)
        if last < 256 // PACK_FANOUT or (pos >= PACK_SOFT and last < 128) or pos >= PACK_MAX:
            groups.append(current)
            current, pos = [], 0
    if current:
        groups.append(current)
    # Blobs in the order their first content was seen, so the manifest reads naturally.
    first_seen: dict[int, int] = {}
    for i in range(len(contents)):
        first_seen.setdefault(group_of[i], len(first_seen))
    order = sorted(range(len(groups)), key=lambda g: first_seen[g])
    renumber = {g: k for k, g in enumerate(order)}
    blobs = []
    for g in order:
        members = groups[g]
        size = max((off + contents[i][1] for off, i in members), default=0)
        blobs.append(PlannedBlob(tuple(members), size))
    where = [(0, 0)] * len(contents)
    for g, members in enumerate(groups):
        for off, i in members:
            where[i] = (renumber[g], off)
    return blobs, where
