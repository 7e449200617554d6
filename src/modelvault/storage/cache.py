"""The local verified cache for remote stores.

Layout under the cache root::

    blobs/<algo>/<hex[:2]>/<hex>   verified blobs, read-only; mtime = last use
    locks/<algo>-<hex>.lock        one lock file per blob being filled or evicted

A blob becomes visible only after its bytes matched the digest (the store's
``get_file`` writes a temporary name, verifies, then renames). Concurrent
fetches of one blob, in threads or processes on this host, serialise on an
``fcntl.flock`` of its lock file: the first downloads, the others find the
blob when they get the lock. After a fill, least-recently-used blobs are
evicted until the cache is within ``max_bytes``; a blob whose lock is held
(being filled or returned by a fetch) is never evicted. A single blob larger
than the bound is still returned; it is the first to go on the next fill.

A cache this process cannot write (a read-only home, a cache directory
shared from another account) still serves its verified blobs, but is never
filled: a blob it lacks is fetched from the store into a private temporary
directory, verified as it is written, and removed when the cache object goes
(at exit at the latest). No lock file is written for such reads. Clearing a
read-only cache raises :class:`~modelvault.errors.StoreAccessError`.

``mvault cache ls`` and ``mvault cache clear`` are :meth:`BlobCache.ls` and
:meth:`BlobCache.clear`.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import os
import shutil
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from ..digest import ALGORITHMS, parse_digest
from ..errors import (
    BlobNotFoundError,
    IntegrityError,
    InvalidArgumentError,
    StorageError,
    StoreAccessError,
)
from ._io import copy_file_verified, remove_quietly, reserve_space
from .base import BlobInfo, BlobStore, Progress, blob_relpath, fsync_dir, os_error, temp_path_for

__all__ = ["BlobCache", "CachedStore", "default_cache", "wait_for_fills"]

# A temporary download older than this belongs to a process that died.
_STALE_TEMP_SECONDS = 3600


class _ReadOnlyCache(StoreAccessError):
    """The cache directory cannot be written here (permissions, a read-only mount)."""


def _read_only(exc: OSError) -> bool:
    return isinstance(exc, PermissionError) or exc.errno in (errno.EROFS, errno.EACCES)


class BlobCache:
    """A size-bounded, content-addressed cache of verified blobs on local disk."""

    def __init__(self, root: str | os.PathLike[str], max_bytes: int) -> None:
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise InvalidArgumentError(
                f"cache size bound must be an integer >= 0, got {max_bytes!r}"
            )
        self.root = Path(root).expanduser().absolute()
        self.max_bytes = max_bytes
        # Blobs fetched while the cache cannot be written, and entries found bad
        # that could not be removed: never served from the cache again.
        self._private: Path | None = None
        self._private_lock = threading.Lock()
        self._bypass: set[str] = set()

    def path_for(self, digest: str) -> Path:
        """Where a blob lives in the cache (whether or not it is there)."""
        return self.root / blob_relpath(digest)

    def _lock_path(self, digest: str) -> Path:
        algo, hexpart = parse_digest(digest)
        return self.root / "locks" / f"{algo}-{hexpart}.lock"

    @contextlib.contextmanager
    def _locked(self, digest: str, *, blocking: bool = True) -> Iterator[bool]:
        """Hold the blob's lock; yields False when ``blocking`` is off and it is taken.

        The lock file may be removed by an eviction while we wait on it, so
        after locking we check the path still names the file we locked.
        """
        path = self._lock_path(digest)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if _read_only(exc):
                raise _ReadOnlyCache(
                    f"the cache {self.root} is read-only here ({exc.strerror})",
                    hint="point MVAULT_CACHE_DIR at a directory you can write",
                ) from exc
            raise os_error(exc, str(path.parent), "creating") from exc
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                yield False
                return
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            yield True
        finally:
            os.close(fd)

    def _hit(self, path: Path, size: int | None) -> bool:
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        except OSError as exc:  # not a directory, permission denied, I/O error
            raise _unusable(exc, path) from exc
        if size is not None and st.st_size != size:
            # Not what the manifest says: never hand it out; fetch it again.
            remove_quietly(path)
            return False
        with contextlib.suppress(OSError):
            os.utime(path)  # last use, for LRU eviction
        return True

    def fetch(
        self,
        store: BlobStore,
        digest: str,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> Path:
        """A verified local path of the blob, downloading it from ``store`` on a miss.

        Raises IntegrityError (the cache unchanged) when the store's bytes do
        not match the digest, BlobNotFoundError when the store lacks it.
        """
        if digest in self._bypass:
            return self._fetch_private(store, digest, size, progress)
        path = self.path_for(digest)
        if self._hit(path, size):
            return path
        try:
            with self._locked(digest):
                if self._hit(path, size):
                    return path  # another process filled it while we waited
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    if _read_only(exc):
                        raise _ReadOnlyCache(str(exc)) from exc
                    raise os_error(exc, str(path.parent), "creating") from exc
                if not os.access(path.parent, os.W_OK | os.X_OK):
                    raise _ReadOnlyCache(f"{path.parent} is not writable")
                _download(store, digest, path, size, progress)
                with contextlib.suppress(OSError):
                    os.chmod(path, 0o444)
                self._evict(self.max_bytes, keep={digest})
        except _ReadOnlyCache:
            # Read what the cache lacks straight from the store, without filling it.
            return self._fetch_private(store, digest, size, progress)
        return path

    def _fetch_private(
        self, store: BlobStore, digest: str, size: int | None, progress: Progress | None
    ) -> Path:
        """The blob, verified, in a temporary directory of this cache object's own."""
        with self._private_lock:
            if self._private is None:
                import tempfile  # only here: it costs every command start-up

                self._private = Path(tempfile.mkdtemp(prefix="mvault-blobs-"))
                weakref.finalize(self, shutil.rmtree, self._private, True)
        path = self._private / digest.replace(":", "-")
        if not path.is_file():
            _download(store, digest, path, size, progress)
        return path

    def filler(self, digest: str, size: int) -> CacheFill | None:
        """A cache entry filled by a streaming load as it reads, committed once verified.

        None when the cache cannot take it now (its directory unusable, the disk
        full, or the blob larger than the cache); the load then streams without
        filling. Nothing of an unverified fill is ever visible under the blob's name.
        """
        if size > self.max_bytes:
            return None
        path = self.path_for(digest)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_path_for(path)
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError:
            return None
        try:
            reserve_space(fd, size)
        except (OSError, StorageError):
            os.close(fd)
            remove_quietly(tmp)
            return None
        return CacheFill(self, digest, path, tmp, fd)

    def _entries(self) -> Iterator[tuple[str, Path, os.stat_result]]:
        blobs = self.root / "blobs"
        for algo in sorted(ALGORITHMS):
            top = blobs / algo
            if not top.is_dir():
                continue
            for sub in top.iterdir():
                if not sub.is_dir():
                    continue
                for entry in os.scandir(sub):
                    path = Path(entry.path)
                    if entry.name.startswith("."):
                        with contextlib.suppress(OSError):
                            if time.time() - entry.stat().st_mtime > _STALE_TEMP_SECONDS:
                                path.unlink()  # a download whose process died
                        continue
                    digest = f"{algo}:{entry.name}"
                    try:
                        parse_digest(digest)
                        st = entry.stat()
                    except (ValueError, OSError):
                        continue
                    yield digest, path, st

    def ls(self) -> list[BlobInfo]:
        """Cached blobs, least recently used first (``modified`` is the last use)."""
        rows = [
            BlobInfo(d, st.st_size, datetime.fromtimestamp(st.st_mtime, timezone.utc))
            for d, _, st in self._entries()
        ]
        return sorted(rows, key=lambda b: (b.modified, b.digest))

    def size(self) -> int:
        """Bytes held by cached blobs."""
        return sum(st.st_size for _, _, st in self._entries())

    def evict(self, target_bytes: int) -> int:
        """Remove least-recently-used blobs until at most ``target_bytes`` remain; bytes freed."""
        return self._evict(target_bytes, keep=set())

    def _evict(self, target_bytes: int, keep: Iterable[str]) -> int:
        kept = set(keep)
        entries = sorted(self._entries(), key=lambda e: e[2].st_mtime)
        total = sum(st.st_size for _, _, st in entries)
        freed = 0
        for digest, path, st in entries:
            if total <= target_bytes:
                break
            if digest in kept:
                continue
            with self._locked(digest, blocking=False) as got:
                if not got:
                    continue  # being filled or returned right now
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise os_error(exc, str(path), "evicting") from exc
                remove_quietly(self._lock_path(digest))
            total -= st.st_size
            freed += st.st_size
        return freed

    def clear(self) -> int:
        """Remove every cached blob not in use right now; bytes freed."""
        return self._evict(0, keep=set())

    def contains(self, digest: str) -> bool:
        """True when the blob is in the cache (and not an entry found bad that stays)."""
        return digest not in self._bypass and self.path_for(digest).is_file()

    def discard(self, digest: str) -> None:
        """Drop one blob from the cache (after it was deleted from the store, or found bad).

        In a cache that cannot be written the entry stays, but this object
        never serves it again: the next fetch reads the store.
        """
        self._bypass.add(digest)
        if self._private is not None:
            remove_quietly(self._private / digest.replace(":", "-"))
        try:
            with self._locked(digest):
                remove_quietly(self.path_for(digest))
        except _ReadOnlyCache:
            return
        self._bypass.discard(digest)


def _download(
    store: BlobStore, digest: str, path: Path, size: int | None, progress: Progress | None
) -> None:
    """``store``'s blob at ``path``, every byte checked against ``digest`` and ``size``."""
    store.get_file(digest, path, progress=progress, verify=True)
    got = path.stat().st_size
    if size is not None and got != size:
        remove_quietly(path)
        raise IntegrityError(
            f"blob {digest} in {store.where(digest)} has {got} bytes, the manifest says {size}",
            expected=f"{size} bytes",
            actual=f"{got} bytes",
            where=store.where(digest),
        )


class CacheFill:
    """One blob's cache file being written at offsets (see :meth:`BlobCache.filler`).

    ``write_at`` may be called from several threads; :meth:`commit` (after the
    caller verified the bytes) makes it durable and renames it into place;
    :meth:`abort` removes it. A fill that hits an error writing stops filling
    (the load goes on) and is aborted at commit.
    """

    def __init__(self, cache: BlobCache, digest: str, path: Path, tmp: Path, fd: int) -> None:
        self._cache = cache
        self.digest = digest
        self._path = path
        self._tmp = tmp
        self._fd = fd
        self._failed = False

    def write_at(self, view: memoryview, offset: int) -> None:
        if self._failed or self._fd < 0:
            return
        try:
            while view:
                n = os.pwrite(self._fd, view, offset)
                view = view[n:]
                offset += n
        except OSError:
            self._failed = True  # a full disk costs the cache entry, not the load

    def commit(self) -> bool:
        """Make the verified entry visible; False (and nothing left) when it could not be."""
        if self._fd < 0:
            return False
        try:
            if self._failed:
                raise OSError("an earlier write failed")
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            os.chmod(self._tmp, 0o444)
            os.replace(self._tmp, self._path)
        except OSError:
            self.abort()
            return False
        with contextlib.suppress(OSError, StorageError):
            fsync_dir(self._path.parent)
            self._cache._evict(self._cache.max_bytes, keep={self.digest})
        return True

    def commit_later(self) -> None:
        """:meth:`commit` on a background thread: the load that verified the bytes need
        not wait for the disk. The entry appears under its name once durable;
        :func:`wait_for_fills` (also run at exit) waits for every pending one."""
        with _fills_lock:
            _pending_fills.add(self)
        t = threading.Thread(target=self._commit_and_forget, name="mvault-cache-fill", daemon=True)
        t.start()

    def _commit_and_forget(self) -> None:
        try:
            self.commit()
        finally:
            with _fills_lock:
                _pending_fills.discard(self)
                _fills_lock.notify_all()

    def abort(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        remove_quietly(self._tmp)


_fills_lock = threading.Condition()
_pending_fills: set[CacheFill] = set()


def wait_for_fills(timeout: float | None = None) -> bool:
    """Wait until every cache fill committed in the background is in place; False on timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with _fills_lock:
        while _pending_fills:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            _fills_lock.wait(left)
    return True


atexit.register(wait_for_fills)


def _unusable(exc: OSError, path: Path) -> StorageError:
    err = os_error(exc, str(path), "reading the cache entry")
    err.hint = "repair or remove the cache directory, or point MVAULT_CACHE_DIR elsewhere"
    return err


def default_cache() -> BlobCache:
    """The cache configured by ``MVAULT_CACHE_DIR`` and ``MVAULT_CACHE_SIZE``."""
    from ..config import settings

    cfg = settings()
    return BlobCache(cfg.cache_dir, cfg.cache_size)


class CachedStore(BlobStore):
    """A remote store seen through the local cache.

    Reads (``local_path``, ``get_file``, ``read_range``) are served from the
    cache, filling it on a miss, so the loader can treat a remote store as a
    local one; writes, listing and stat go to the remote.
    """

    def __init__(self, remote: BlobStore, cache: BlobCache) -> None:
        self.remote = remote
        self.cache = cache
        self.url = remote.url

    def where(self, digest: str) -> str:
        return self.remote.where(digest)

    def stat(self, digest: str) -> BlobInfo | None:
        return self.remote.stat(digest)

    def put_stream(
        self,
        digest: str,
        chunks: Iterable[bytes | bytearray | memoryview],
        size: int,
        *,
        progress: Progress | None = None,
    ) -> bool:
        return self.remote.put_stream(digest, chunks, size, progress=progress)

    def put_file(
        self,
        digest: str,
        path: str | os.PathLike[str],
        *,
        offset: int = 0,
        length: int | None = None,
        progress: Progress | None = None,
    ) -> bool:
        return self.remote.put_file(digest, path, offset=offset, length=length, progress=progress)

    @property
    def holds_files(self) -> bool:  # type: ignore[override]
        # local_path fills the cache from the remote: a fetch, unless the remote holds files
        return self.remote.holds_files

    def local_path(self, digest: str) -> Path | None:
        direct = self.remote.local_path(digest)
        if direct is not None:
            return direct
        return self.cache.fetch(self.remote, digest)

    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        path = self.cache.path_for(digest)
        if not path.is_file():
            return self.remote.read_range(digest, offset, length)
        from .local import LocalStore

        return LocalStore(self.cache.root).read_range(digest, offset, length)

    def get_file(
        self,
        digest: str,
        dest: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        verify: bool = True,
    ) -> None:
        src = self.local_path(digest)
        if src is None:
            raise BlobNotFoundError(digest, self.url)
        copy_file_verified(src, Path(dest), digest, progress=progress, verify=verify)

    def delete(self, digest: str) -> bool:
        existed = self.remote.delete(digest)
        self.cache.discard(digest)
        return existed

    def list(self) -> Iterator[BlobInfo]:
        return self.remote.list()

    def close(self) -> None:
        self.remote.close()
