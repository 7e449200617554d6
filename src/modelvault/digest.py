"""Content digests: ``"<algorithm>:<lowercase hex>"``.

BLAKE3 is the default. It is a tree hash, so one large buffer is hashed on
every core at once (``max_threads``), and a single core runs it several times
faster than SHA-256 on the same bytes: verification stays well under the cost
of reading. ``sha256`` is accepted for interoperability with OCI-style tools.
Any other algorithm name is refused with :class:`UnsupportedDigestError`.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

import blake3

from .errors import IntegrityError, InvalidArgumentError, ManifestError, UnsupportedDigestError

__all__ = [
    "ALGORITHMS",
    "CHUNK",
    "DEFAULT_ALGORITHM",
    "Hasher",
    "beside_io_threads",
    "damaged",
    "digest_bytes",
    "digest_file",
    "digest_hex_length",
    "hash_chunks",
    "new_hasher",
    "parse_digest",
    "placeholder_digest",
    "read_verified_into",
    "verify_bytes",
]

DEFAULT_ALGORITHM = "blake3"
ALGORITHMS: dict[str, int] = {"blake3": 64, "sha256": 64}
#: Read and hash in chunks of this size: large enough for the tree hash to use
#: every core, small enough to stay in cache-friendly, bounded memory.
CHUNK = 8 * 1024 * 1024
# Below this a thread pool costs more than it saves.
_PARALLEL_MIN = 1 << 20
_DIGEST_RE = re.compile(r"^([a-z0-9][a-z0-9_+.-]{0,31}):([0-9a-f]+)$")


class Hasher(Protocol):
    """What a running hash offers."""

    algorithm: str

    def update(self, data: bytes | bytearray | memoryview) -> None: ...

    def hexdigest(self) -> str: ...

    def digest_str(self) -> str: ...


class _Blake3:
    algorithm = "blake3"

    def __init__(self, threads: int | None = None) -> None:
        self._h = blake3.blake3(max_threads=blake3.blake3.AUTO if threads is None else threads)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)

    def hexdigest(self) -> str:
        return str(self._h.hexdigest())

    def digest_str(self) -> str:
        return f"blake3:{self.hexdigest()}"


class _Sha256:
    algorithm = "sha256"

    def __init__(self, threads: int | None = None) -> None:
        import hashlib  # here: loading OpenSSL costs start-up, and BLAKE3 is the default

        self._h = hashlib.sha256()  # sequential by design; ``threads`` does not apply

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def digest_str(self) -> str:
        return f"sha256:{self.hexdigest()}"


_FACTORIES: dict[str, Callable[[int | None], Hasher]] = {"blake3": _Blake3, "sha256": _Sha256}


def beside_io_threads() -> int:
    """Threads for a hash that runs beside the caller's own reading or sending:
    every core this process may use but one, which the I/O keeps (at least one),
    so the hash does not take the core the reads need.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def new_hasher(algorithm: str = DEFAULT_ALGORITHM, *, threads: int | None = None) -> Hasher:
    """A running hash for ``algorithm`` (``blake3`` or ``sha256``).

    ``threads=None`` lets BLAKE3 use every core for each large update; a caller
    that overlaps hashing with its own I/O passes :func:`beside_io_threads` (or
    ``threads=1`` where another thread of its own hashes too) so the hash does
    not take the core the I/O runs on.
    """
    try:
        return _FACTORIES[algorithm](threads)
    except KeyError:
        raise UnsupportedDigestError(
            f"digest algorithm {algorithm!r} is not supported (known: {', '.join(ALGORITHMS)})",
            hint="the file was written by a newer modelvault or another tool; upgrade modelvault",
        ) from None


def parse_digest(value: object) -> tuple[str, str]:
    """Split ``"blake3:ab12…"`` into ``("blake3", "ab12…")``, validating both parts.

    Raises :class:`ManifestError` for a malformed string and
    :class:`UnsupportedDigestError` for an algorithm this version does not know.
    """
    if not isinstance(value, str) or len(value) > 200:
        raise ManifestError(f"digest must be a string like 'blake3:<hex>', got {value!r:.80}")
    m = _DIGEST_RE.match(value)
    if not m:
        raise ManifestError(
            f"malformed digest {value!r:.80}; expected '<algorithm>:<lowercase hex>'"
        )
    algo, hexpart = m.group(1), m.group(2)
    if algo not in ALGORITHMS:
        new_hasher(algo)  # raises UnsupportedDigestError
    if len(hexpart) != ALGORITHMS[algo]:
        raise ManifestError(
            f"digest {value!r:.80} has {len(hexpart)} hex digits; {algo} has {ALGORITHMS[algo]}"
        )
    return algo, hexpart


def digest_hex_length(algorithm: str) -> int:
    """Hex digits in a digest of ``algorithm``; :class:`UnsupportedDigestError` if unknown."""
    if algorithm not in ALGORITHMS:
        new_hasher(algorithm)  # raises UnsupportedDigestError
    return ALGORITHMS[algorithm]


def placeholder_digest(algorithm: str = DEFAULT_ALGORITHM) -> str:
    """A digest-shaped string of the right length, for sizing a header before hashing."""
    return f"{algorithm}:{'0' * digest_hex_length(algorithm)}"


def digest_bytes(data: bytes | bytearray | memoryview, algorithm: str = DEFAULT_ALGORITHM) -> str:
    """The digest string of an in-memory buffer."""
    h = new_hasher(algorithm)
    h.update(data)
    return h.digest_str()


def hash_chunks(chunks: Iterable[memoryview | bytes], algorithm: str = DEFAULT_ALGORITHM) -> str:
    """The digest string of the concatenation of ``chunks``."""
    h = new_hasher(algorithm)
    for c in chunks:
        h.update(c)
    return h.digest_str()


def _pipelined(
    read_into: Callable[[memoryview], int],
    total: int,
    consume: Callable[[memoryview], None],
    chunk: int = CHUNK,
    dest: memoryview | None = None,
) -> int:
    """Read ``total`` bytes through two alternating buffers: the next read runs in
    a thread while the current chunk is consumed (hashed, copied). Both file reads
    and BLAKE3 release the GIL, so the two overlap on two cores.

    With ``dest`` (at least ``total`` bytes) the chunks are read straight into
    consecutive slices of it instead, saving a copy."""
    if dest is None:
        bufs = [bytearray(min(chunk, max(total, 1))) for _ in range(2)]
        views = [memoryview(b) for b in bufs]
    result: list[int | BaseException] = [0]

    def fill(view: memoryview, want: int) -> None:
        try:
            got = 0
            while got < want:
                n = read_into(view[got:want])
                if not n:
                    break
                got += n
            result[0] = got
        except BaseException as exc:  # re-raised in the caller's thread
            result[0] = exc

    def slot(i: int, at: int) -> memoryview:
        return views[i] if dest is None else dest[at : at + chunk]

    done = 0
    idx = 0
    want = min(chunk, total)
    fill(slot(0, 0), want)
    while True:
        got = result[0]
        if isinstance(got, BaseException):
            raise got
        cur = slot(idx, done)[:got]
        done += got
        nxt_want = min(chunk, total - done) if got == want else 0
        worker = None
        if nxt_want > 0:
            worker = threading.Thread(target=fill, args=(slot(1 - idx, done), nxt_want))
            worker.start()
        try:
            consume(cur)
        finally:
            if worker is not None:
                worker.join()
        if worker is None:
            return done
        idx = 1 - idx
        want = nxt_want


def read_verified_into(
    f: BinaryIO,
    size: int,
    expected: str,
    consume: Callable[[memoryview], None] | None = None,
    *,
    where: str = "",
    into: memoryview | None = None,
) -> None:
    """Read ``size`` bytes from ``f``'s current position, hash them, hand each chunk
    to ``consume``, and raise :class:`IntegrityError` if the bytes are fewer than
    ``size`` or do not match ``expected``.

    ``into`` (a writable byte view of at least ``size`` bytes) receives the bytes
    directly, without the copy a ``consume`` that copies would make. The caller
    must not trust what it received until this returns without raising.
    """
    algo, _ = parse_digest(expected)
    if into is not None:
        into = into.cast("B") if into.format != "B" or into.ndim != 1 else into
        if into.readonly or into.nbytes < size:
            raise InvalidArgumentError(f"into must be a writable buffer of at least {size} bytes")
    h = new_hasher(algo, threads=beside_io_threads())  # the reads run beside it

    def eat(view: memoryview) -> None:
        h.update(view)
        if consume is not None:
            consume(view)

    got = _pipelined(f.readinto, size, eat, dest=into)  # type: ignore[attr-defined]
    if got != size:
        raise IntegrityError(
            f"blob {expected} is truncated: {got} of {size} bytes{' in ' + where if where else ''}",
            expected=expected,
            actual=f"{got} bytes",
            where=where,
        )
    actual = h.digest_str()
    if actual != expected:
        raise damaged(expected, actual, where)


def damaged(expected: str, actual: str, where: str = "") -> IntegrityError:
    """The error for bytes that hash to ``actual`` where ``expected`` was recorded."""
    return IntegrityError(
        f"blob {expected} is damaged: its bytes hash to {actual}"
        + (f" (in {where})" if where else ""),
        expected=expected,
        actual=actual,
        where=where,
        hint="the copy is corrupt or was tampered with; fetch it again or restore it from a good copy",
    )


def digest_file(path: str | os.PathLike[str], algorithm: str = DEFAULT_ALGORITHM) -> str:
    """The digest string of a whole file, read and hashed in overlapping chunks."""
    h = new_hasher(algorithm, threads=beside_io_threads())
    p = Path(path)
    with p.open("rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        _pipelined(f.readinto, size, h.update)
    return h.digest_str()


def verify_bytes(data: bytes | bytearray | memoryview, expected: str, *, where: str = "") -> None:
    """Raise :class:`IntegrityError` unless ``data`` hashes to ``expected``."""
    algo, _ = parse_digest(expected)
    actual = digest_bytes(data, algo)
    if actual != expected:
        raise damaged(expected, actual, where)


def iter_file_chunks(
    path: str | os.PathLike[str], offset: int = 0, length: int | None = None, chunk: int = CHUNK
) -> Iterator[bytes]:
    """Yield a file's bytes from ``offset`` in chunks."""
    with open(path, "rb") as f:
        f.seek(offset)
        left = length if length is not None else os.fstat(f.fileno()).st_size - offset
        while left > 0:
            b = f.read(min(chunk, left))
            if not b:
                return
            left -= len(b)
            yield b
