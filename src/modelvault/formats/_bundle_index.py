"""The index of a ``.mvpk`` bundle: what it may hold besides the blob extents.

The index is canonical msgpack: ``blobs`` (``[offset, size]`` per blob) and
``manifest`` (its digest), optionally ``ref`` (the name and version it was
exported as) and ``signatures`` (OMS signature bundles over the variant, byte
strings in the order of their BLAKE3 digests). ``signatures`` is present exactly
when the preamble sets :data:`FLAG_SIGNATURES`; readers that predate the flag
refuse such a bundle as a later format ("upgrade modelvault") instead of
calling it damaged. ``docs/FORMAT.md`` is the specification.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from ..digest import digest_bytes
from ..errors import CorruptError, InvalidArgumentError
from .manifest import LIMITS, encode_msgpack

__all__ = [
    "FLAG_DEFLATED_MANIFEST",
    "FLAG_SIGNATURES",
    "KNOWN_FLAGS",
    "MAX_SIGNATURES",
    "check_ref",
    "check_signatures",
    "encode_index",
    "signature_order",
    "sorted_signatures",
]

#: Preamble flag: the index carries ``signatures``.
FLAG_SIGNATURES = 0x1
#: Preamble flag: the manifest is deflated (format 1.2 and later). A 1.1 reader
#: does not know the flag, so it refuses such a bundle as newer ("upgrade")
#: instead of calling its manifest damaged msgpack.
FLAG_DEFLATED_MANIFEST = 0x2
KNOWN_FLAGS = FLAG_SIGNATURES | FLAG_DEFLATED_MANIFEST
#: Signatures one bundle may carry (each at most ``LIMITS.string`` bytes).
MAX_SIGNATURES = 64


def encode_index(
    manifest_digest: str,
    extents: list[tuple[int, int]],
    ref: Mapping[str, str] | None = None,
    signatures: Sequence[bytes] = (),
) -> bytes:
    """The index bytes; ``signatures`` already in order (:func:`sorted_signatures`)."""
    index: dict[str, object] = {"blobs": [[o, s] for o, s in extents], "manifest": manifest_digest}
    if ref:
        index["ref"] = dict(ref)
    if signatures:
        index["signatures"] = list(signatures)
    return encode_msgpack(index)


def signature_order(sig: bytes) -> str:
    """Signatures are ordered (and told apart) by their digest, as the store names them."""
    return digest_bytes(sig)


def check_signatures(raw: object, flags: int) -> tuple[bytes, ...]:
    """The index's ``signatures``: present exactly when the flag says, distinct, in digest order."""
    if not flags & FLAG_SIGNATURES:
        if raw is not None:
            raise CorruptError("bundle index carries 'signatures' but the preamble flag is not set")
        return ()
    if not isinstance(raw, list) or not raw:
        raise CorruptError("bundle preamble flags signatures, but its index lists none")
    if len(raw) > MAX_SIGNATURES:
        raise CorruptError(f"bundle carries {len(raw)} signatures; the limit is {MAX_SIGNATURES}")
    if not all(isinstance(x, bytes) and 0 < len(x) <= LIMITS.string for x in raw):
        raise CorruptError(
            f"bundle index 'signatures' must be byte strings of 1 to {LIMITS.string} bytes"
        )
    order = [signature_order(x) for x in raw]
    if any(a >= b for a, b in itertools.pairwise(order)):
        raise CorruptError("bundle signatures must be distinct and in the order of their digests")
    return tuple(raw)


def check_ref(ref: object) -> dict[str, str] | None:
    """The optional ``ref`` of an index: the model name and version it was exported as."""
    if ref is None:
        return None
    if (
        not isinstance(ref, dict)
        or set(ref) != {"name", "version"}
        or not all(
            isinstance(v, str) and 0 < len(v) <= 256 and v.isprintable() for v in ref.values()
        )
    ):
        raise CorruptError(
            "bundle index 'ref' must map exactly 'name' and 'version' to strings of 1-256 printable characters"
        )
    return dict(ref)


def sorted_signatures(signatures: Sequence[bytes]) -> tuple[bytes, ...]:
    """Signatures to write: each once, in digest order, within the limits a reader checks."""
    unique = {signature_order(bytes(s)): bytes(s) for s in signatures}
    if len(unique) > MAX_SIGNATURES:
        raise InvalidArgumentError(
            f"{len(unique)} signatures; a bundle carries at most {MAX_SIGNATURES}"
        )
    for s in unique.values():
        if not 0 < len(s) <= LIMITS.string:
            raise InvalidArgumentError(
                f"a signature of {len(s)} bytes; a bundle carries 1 to {LIMITS.string} bytes each"
            )
    return tuple(unique[d] for d in sorted(unique))
