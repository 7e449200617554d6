"""Content-addressed tensor layout (format 1.1): what is stored depends on contents only."""

from __future__ import annotations

import os
import random
import struct

from modelvault.digest import digest_bytes
from modelvault.formats._layout import LOOSE_SMALL, PACK_MAX, PACK_SOFT, STANDALONE_BYTES, plan
from modelvault.formats.container import Draft, TensorSectionBuilder, finalize
from modelvault.formats.manifest import Manifest


def _draft(tensors: list[tuple[str, bytes]]) -> Draft:
    b = TensorSectionBuilder()
    for name, data in tensors:
        b.add(name, "uint8", (len(data),), data)
    d = Draft("p", "1")
    d.add_tensor_section(b)
    d.compute_digests()
    return d


def _blobs(d: Draft) -> dict[str, int]:
    return {b.digest: b.source.size for b in d.blobs if b.digest is not None}


def _bytes_of(d: Draft, name: str) -> bytes:
    m = finalize(d)
    e = next(t for t in m.tensors if t.name == name)
    blob = b"".join(bytes(c) for c in d.blobs[e.blob].source.chunks())
    return blob[e.offset : e.offset + e.nbytes]


def _model(n_small: int, n_large: int, seed: int = 0) -> list[tuple[str, bytes]]:
    rnd = random.Random(seed)
    out = [(f"large{i}", rnd.randbytes(STANDALONE_BYTES + 1000 * i)) for i in range(n_large)]
    out += [(f"small{i}", rnd.randbytes(100 + 37 * i)) for i in range(n_small)]
    return out


def test_blobs_do_not_depend_on_order_or_names() -> None:
    tensors = _model(n_small=200, n_large=5)
    shuffled = tensors[:]
    random.Random(1).shuffle(shuffled)
    renamed = [(f"state_dict/{i}.{n}", data) for i, (n, data) in enumerate(shuffled)]
    assert _blobs(_draft(tensors)) == _blobs(_draft(renamed))
    d = _draft(renamed)
    for name, data in renamed:
        assert _bytes_of(d, name) == data


def test_a_large_tensor_is_a_blob_whose_digest_is_its_own() -> None:
    big = os.urandom(STANDALONE_BYTES)
    d = _draft([("w", big), ("b", b"tiny")])
    assert digest_bytes(big) in _blobs(d)
    assert digest_bytes(b"tiny") in _blobs(d)  # few small tensors stay loose too
    assert len(d.blobs) == 2


def test_identical_tensors_are_stored_once_and_share_one_range() -> None:
    same = os.urandom(5000)
    d = _draft([("a", same), ("b", os.urandom(10)), ("c", same)])
    m = finalize(d)
    t = {e.name: e for e in m.tensors}
    assert (t["a"].blob, t["a"].offset) == (t["c"].blob, t["c"].offset)
    assert len(m.blobs) == 2
    assert Manifest.decode(m.encode()) == m


def test_many_small_tensors_share_few_packs() -> None:
    d = _draft(_model(n_small=300, n_large=0))
    packs = [b.source.size for b in d.blobs]
    assert 300 // 40 <= len(packs) <= 300 // 6  # about one pack per 16 tensors
    assert max(packs) <= PACK_MAX + STANDALONE_BYTES
    assert all(t.offset % 4096 == 0 for t in d.tensors)


def _changed_bytes(old: Draft, new: Draft) -> int:
    have = _blobs(old)
    return sum(size for digest, size in _blobs(new).items() if digest not in have)


def test_changing_one_small_tensor_rewrites_at_most_three_packs() -> None:
    """The pack it leaves, and the one it joins, which may split in two."""
    tensors = _model(n_small=400, n_large=3)
    before = _draft(tensors)
    for k in (0, 57, 123, 399):
        changed = tensors[:]
        name, data = changed[3 + k]
        changed[3 + k] = (name, bytes([data[0] ^ 1]) + data[1:])
        after = _draft(changed)
        new = [d for d in _blobs(after) if d not in _blobs(before)]
        assert 1 <= len(new) <= 3, k
        assert _changed_bytes(before, after) <= 3 * PACK_SOFT, k


def test_an_extra_small_tensor_disturbs_at_most_two_packs() -> None:
    """An ExportedProgram keeps buffers a state dict drops: the rest still dedups."""
    tensors = _model(n_small=400, n_large=3)
    extra = [*tensors, ("non_persistent_buffer", os.urandom(777))]
    new = [d for d in _blobs(_draft(extra)) if d not in _blobs(_draft(tensors))]
    assert 1 <= len(new) <= 2  # the pack it joins, which may split in two


def test_few_small_tensors_stay_loose_so_one_change_costs_that_tensor() -> None:
    tensors = _model(n_small=LOOSE_SMALL, n_large=2)
    changed = tensors[:]
    name, data = changed[-1]
    changed[-1] = (name, data[::-1])
    assert _changed_bytes(_draft(tensors), _draft(changed)) == len(data)


def test_plan_is_deterministic_and_covers_every_content() -> None:
    contents = [(digest_bytes(struct.pack("<I", i)), 10 + i) for i in range(LOOSE_SMALL + 50)]
    blobs, where = plan(contents)
    assert (blobs, where) == plan(contents)
    placed = sorted(i for b in blobs for _off, i in b.members)
    assert placed == list(range(len(contents)))
    for i, (blob, offset) in enumerate(where):
        assert (offset, i) in blobs[blob].members
        assert offset + contents[i][1] <= blobs[blob].size


def test_empty_tensors_take_no_bytes() -> None:
    d = _draft([("e1", b""), ("e2", b""), ("x", b"x")])
    m = finalize(d)
    assert {e.nbytes for e in m.tensors if e.name.startswith("e")} == {0}
    assert Manifest.decode(m.encode()) == m
