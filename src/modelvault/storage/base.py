"""The BlobStore protocol: a handful of primitives, the rest built on top.

A blob is an immutable byte string named by its digest (``"blake3:<hex>"``).
A back end implements :meth:`BlobStore.stat`, :meth:`BlobStore.put_stream`,
:meth:`BlobStore.read_range`, :meth:`BlobStore.delete` and
:meth:`BlobStore.list`; the base class derives ``exists``, ``put_file``,
``put_bytes`` and ``get_file`` from them, and a back end overrides those where
it can do better (S3: parallel multipart upload and ranged download).

Every store verifies that the bytes hash to the digest before a blob becomes
visible, and :meth:`BlobStore.get_file` verifies again before the file appears
at its destination: a store never hands back a wrong byte.

Progress
    A :class:`Progress` receives ``start`` and ``finish`` on the calling
    thread, but ``advance`` may be called from the store's worker threads
    (parallel parts): implementations must be thread-safe.
    :class:`CallbackProgress` is.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Protocol, runtime_checkable

from ..digest import CHUNK, iter_file_chunks, parse_digest
from ..errors import (
    IntegrityError,
    InvalidArgumentError,
    StorageError,
    StorageFullError,
    StoreAccessError,
)

__all__ = [
    "BlobInfo",
    "BlobStore",
    "CallbackProgress",
    "NullProgress",
    "Progress",
    "blob_relpath",
    "check_range",
    "os_error",
]


@dataclass(frozen=True)
class BlobInfo:
    """What a store knows about one blob."""

    digest: str
    size: int
    #: Last modification (for a cache: last use), timezone-aware UTC.
    modified: datetime


@runtime_checkable
class Progress(Protocol):
    """Receives bytes done/total for one transfer (a progress bar).

    ``start`` and ``finish`` come from the calling thread; ``advance`` may come
    from worker threads, so an implementation must be thread-safe.
    """

    def start(self, total: int, label: str) -> None: ...

    def advance(self, n: int) -> None: ...

    def finish(self) -> None: ...


class NullProgress:
    """A Progress that does nothing."""

    def start(self, total: int, label: str) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass


class CallbackProgress:
    """A thread-safe Progress that calls ``callback(done, total, label)`` on each change.

    >>> seen = []
    >>> p = CallbackProgress(lambda done, total, label: seen.append(done))
    >>> p.start(10, "blob"); p.advance(4); p.advance(6); p.finish()
    >>> seen
    [0, 4, 10, 10]
    """

    def __init__(self, callback: Callable[[int, int, str], None]) -> None:
        self._callback = callback
        self._lock = threading.Lock()
        self.done = 0
        self.total = 0
        self.label = ""
        self.finished = False

    def start(self, total: int, label: str) -> None:
        with self._lock:
            self.done, self.total, self.label, self.finished = 0, total, label, False
            self._callback(0, total, label)

    def advance(self, n: int) -> None:
        with self._lock:
            self.done += n
            self._callback(self.done, self.total, self.label)

    def finish(self) -> None:
        with self._lock:
            self.finished = True
            self._callback(self.done, self.total, self.label)


def blob_relpath(digest: str) -> str:
    """``"blobs/<algo>/<hex[:2]>/<hex>"`` for a digest, after validating it.

    The digest is parsed strictly (lowercase hex of the algorithm's length), so
    a hostile string can never become a path traversal or an odd object key.
    """
    algo, hexpart = parse_digest(digest)
    return f"blobs/{algo}/{hexpart[:2]}/{hexpart}"


def check_range(offset: int, length: int) -> None:
    """Refuse a negative or non-integer byte range before any I/O."""
    if not isinstance(offset, int) or not isinstance(length, int) or offset < 0 or length < 0:
        raise InvalidArgumentError(
            f"byte range offset={offset!r} length={length!r} is invalid; both must be integers >= 0"
        )


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def os_error(exc: OSError, where: str, doing: str) -> StorageError:
    """Translate an OSError met while writing or reading ``where`` to a StorageError."""
    if exc.errno in _FULL:
        return StorageFullError(
            f"no space left while {doing} {where} ({os.strerror(exc.errno or 0)})",
            hint="free some space (mvault cache clear, mvault gc) or point the store elsewhere",
        )
    if isinstance(exc, PermissionError):
        return StoreAccessError(f"permission denied while {doing} {where}: {exc}")
    return StorageError(f"{doing} {where} failed: {exc}")


def temp_path_for(dest: Path) -> Path:
    """A unique temporary name next to ``dest`` (same directory, so the rename is atomic)."""
    return dest.with_name(f".{dest.name}.{os.urandom(6).hex()}.part")


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)


class BlobStore(ABC):
    """Content-addressed storage of immutable blobs named by digest.

    Use as a context manager or call :meth:`close`.
    """

    url: str
    #: True when every blob is a file on this machine that :meth:`local_path`
    #: returns without fetching anything (a local directory): a loader then
    #: locates blobs inline instead of on a thread pool.
    holds_files: bool = False

    # ---- primitives -----------------------------------------------------

    @abstractmethod
    def stat(self, digest: str) -> BlobInfo | None:
        """Size and modification time of a blob, or None when it is absent."""

    @abstractmethod
    def put_stream(
        self,
        digest: str,
        chunks: Iterable[bytes | bytearray | memoryview],
        size: int,
        *,
        progress: Progress | None = None,
    ) -> bool:
        """Store ``size`` bytes from ``chunks`` under ``digest``.

        Returns True if bytes were written, False if the blob was already
        present (then ``chunks`` is not consumed). The bytes are verified
        against ``digest`` before the blob becomes visible; a mismatch raises
        :class:`~modelvault.errors.IntegrityError` and leaves nothing behind.
        """

    @abstractmethod
    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes of a blob from ``offset``.

        Raises BlobNotFoundError for a missing blob and InvalidArgumentError
        for a range past its end. The bytes are not verified (a range cannot
        be); use :meth:`get_file` for a verified copy.
        """

    @abstractmethod
    def delete(self, digest: str) -> bool:
        """Remove a blob; True if it existed."""

    @abstractmethod
    def list(self) -> Iterator[BlobInfo]:
        """Every blob in the store, in no particular order."""

    # ---- derived --------------------------------------------------------

    def exists(self, digest: str) -> bool:
        """True when the blob is present."""
        return self.stat(digest) is not None

    def put_file(
        self,
        digest: str,
        path: str | os.PathLike[str],
        *,
        offset: int = 0,
        length: int | None = None,
        progress: Progress | None = None,
    ) -> bool:
        """Store ``length`` bytes of the file at ``path`` from ``offset`` (default: to its end).

        Same contract as :meth:`put_stream`: dedup check first, verification
        before the blob is visible.
        """
        parse_digest(digest)
        p = Path(path)
        size = _file_extent(p, offset, length)
        if self.exists(digest):
            return False
        return self.put_stream(digest, iter_file_chunks(p, offset, size), size, progress=progress)

    def put_bytes(self, digest: str, data: bytes | bytearray | memoryview) -> bool:
        """Store an in-memory buffer under ``digest``."""
        return self.put_stream(digest, [data], len(data))

    def get_file(
        self,
        digest: str,
        dest: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        verify: bool = True,
    ) -> None:
        """Download a blob to ``dest`` atomically.

        The bytes go to a temporary name in ``dest``'s directory, are fsynced
        and verified, then renamed over ``dest``. On a digest mismatch
        IntegrityError names the digest and where it came from, and nothing
        is left at ``dest``.
        """
        from ._io import download_sequential

        download_sequential(self, digest, Path(dest), progress=progress, verify=verify)

    def staging_dir(self) -> Path | None:
        """A directory where a caller may write a blob's file for :meth:`adopt` to publish.

        A local store answers a directory of its own file system, so that
        adopting is a rename, not a copy; a remote store answers None (write
        the file anywhere: :meth:`adopt` then uploads it).
        """
        return None

    def adopt(self, digest: str, path: str | os.PathLike[str], size: int) -> bool:
        """Make the file at ``path``, which the caller has hashed to ``digest``, that blob.

        The file is consumed: moved into place or, once stored, removed (also
        when the blob was already present, then False is returned). A file of
        another size raises IntegrityError and is removed. This generic
        version stores it with :meth:`put_file` (verifying again, as a remote
        store must); a local store renames a file of :meth:`staging_dir` into
        place after one fsync, trusting the caller's hash (the loader hashes
        every blob again as it reads it).
        """
        parse_digest(digest)
        p = Path(path)
        try:
            check_adopted_size(p, digest, size)
            return self.put_file(digest, p)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(p)

    def local_path(self, digest: str) -> Path | None:
        """A path to read the blob in place, or None for a remote store."""
        parse_digest(digest)
        return None

    def range_reader(self, digest: str, size: int) -> RangeReader | None:
        """Something that reads byte ranges of a remote blob into caller memory, or None.

        A store that returns one lets a GPU load stream a blob from the store
        straight into its pinned staging buffers, with no cache round trip. The
        reader grants no trust: the loader hashes every byte it hands on.
        """
        parse_digest(digest)
        return None

    def where(self, digest: str) -> str:
        """A human-readable location of a blob, for error messages."""
        return f"{self.url.rstrip('/')}/{blob_relpath(digest)}"

    def close(self) -> None:  # noqa: B027 - most stores hold nothing to release
        """Release connections and threads."""

    def __enter__(self) -> BlobStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def check_adopted_size(path: Path, digest: str, size: int) -> None:
    """Refuse a file to adopt whose size is not the blob's (the caller's bookkeeping is wrong)."""
    try:
        got = path.stat().st_size
    except FileNotFoundError:
        raise InvalidArgumentError(f"cannot adopt {path} as {digest}: no such file") from None
    except OSError as exc:
        raise os_error(exc, str(path), "reading") from exc
    if got != size:
        raise IntegrityError(
            f"cannot adopt {path} as {digest}: it has {got} bytes, the blob {size}",
            expected=digest,
            actual=f"{got} bytes",
            where=str(path),
        )


def _file_extent(path: Path, offset: int, length: int | None) -> int:
    """How many bytes ``put_file`` will read; refuse ranges past the end before any I/O."""
    try:
        file_size = path.stat().st_size
    except FileNotFoundError:
        raise InvalidArgumentError(f"cannot store {path}: no such file") from None
    except OSError as exc:
        raise os_error(exc, str(path), "reading") from exc
    if length is None:
        length = file_size - offset
    check_range(offset, length)
    if offset + length > file_size:
        raise InvalidArgumentError(
            f"cannot store {length} bytes from offset {offset} of {path}: the file has {file_size} bytes"
        )
    return length


__all__ += ["CHUNK", "check_adopted_size", "fsync_dir", "temp_path_for"]


class RangeReader(Protocol):
    """Reads ranges of one remote blob (see :meth:`BlobStore.range_reader`); thread-safe."""

    def read_into(self, view: memoryview, offset: int) -> int:
        """Fill ``view`` with the blob's bytes from ``offset``; the count read (short at its end)."""
        ...
