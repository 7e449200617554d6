"""Atomic, verified file writes shared by the back ends and the cache."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BlobNotFoundError, IntegrityError, StorageError
from ..digest import CHUNK, damaged, new_hasher, parse_digest
from .base import Progress, fsync_dir, os_error, temp_path_for

if TYPE_CHECKING:
    from .base import BlobStore

__all__ = [
    "check_digest",
    "download_sequential",
    "hash_range",
    "pread_parts",
    "rechunk",
    "remove_quietly",
    "reserve_space",
    "start_writeback",
    "write_temp_verified",
]

_SYNC_FILE_RANGE_WRITE = 2
_WRITEBACK_STEP = 32 * 1024 * 1024
_libc: Any = None


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range to disk now, without waiting.

    The final fsync of a large download then waits for little more than the
    last part instead of the whole file, so durability costs almost no wall
    time. Linux only (``sync_file_range``); elsewhere it does nothing.
    """
    global _libc
    if _libc is None:
        try:
            import ctypes

            lib = ctypes.CDLL(None, use_errno=True)
            fn = lib.sync_file_range
            fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
            _libc = fn
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def remove_quietly(path: Path) -> None:
    """Remove a file if it is there; used on error paths that must not mask the real error."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def check_digest(expected: str, actual: str, got: int, size: int, where: str) -> None:
    """Raise IntegrityError when the received bytes are short, long or hash wrong."""
    if got != size:
        raise IntegrityError(
            f"blob {expected} from {where} has {got} bytes, expected {size}",
            expected=expected,
            actual=f"{got} bytes",
            where=where,
            hint="the transfer was cut short or the stored copy is damaged; try again",
        )
    if actual != expected:
        raise damaged(expected, actual, where)


def write_temp_verified(
    dest: Path,
    chunks: Iterable[bytes | bytearray | memoryview],
    size: int,
    digest: str,
    *,
    where: str,
    progress: Progress | None = None,
    verify: bool = True,
    temp: Path | None = None,
) -> Path:
    """Write ``chunks`` to a temporary file next to ``dest``, hashing as it goes.

    Returns the temporary path, fsynced and verified (size always, digest when
    ``verify``); the caller renames or links it into place. On any error the
    temporary file is removed and the error is translated (ENOSPC becomes
    StorageFullError).
    """
    algo, _ = parse_digest(digest)
    tmp = temp or temp_path_for(dest)
    hasher = new_hasher(algo) if verify else None
    got = flushed = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for chunk in chunks:
                view = memoryview(chunk).cast("B")
                if got + len(view) > size:
                    got += len(view)
                    break
                if hasher is not None:
                    hasher.update(view)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                    got += n
                    if progress is not None:
                        progress.advance(n)
                if got - flushed >= _WRITEBACK_STEP:
                    start_writeback(fd, flushed, got - flushed)
                    flushed = got
            os.fsync(fd)
        finally:
            os.close(fd)
        actual = hasher.digest_str() if hasher is not None else digest
        check_digest(digest, actual, got, size, where)
    except OSError as exc:
        remove_quietly(tmp)
        if isinstance(exc, StorageError):
            raise
        raise os_error(exc, str(dest), "writing") from exc
    except BaseException:
        remove_quietly(tmp)
        raise
    return tmp


def _range_chunks(store: BlobStore, digest: str, size: int) -> Iterator[bytes]:
    offset = 0
    while offset < size:
        n = min(CHUNK, size - offset)
        yield store.read_range(digest, offset, n)
        offset += n


def download_sequential(
    store: BlobStore,
    digest: str,
    dest: Path,
    *,
    progress: Progress | None = None,
    verify: bool = True,
) -> None:
    """The generic ``get_file``: chunked ``read_range`` into a verified temp file, then rename."""
    info = store.stat(digest)
    if info is None:
        raise BlobNotFoundError(digest, store.url)
    if progress is not None:
        progress.start(info.size, digest)
    try:
        tmp = write_temp_verified(
            dest,
            _range_chunks(store, digest, info.size),
            info.size,
            digest,
            where=store.where(digest),
            progress=progress,
            verify=verify,
        )
        try:
            os.replace(tmp, dest)
        except OSError as exc:
            remove_quietly(tmp)
            raise os_error(exc, str(dest), "renaming into") from exc
        fsync_dir(dest.parent)
    finally:
        if progress is not None:
            progress.finish()


def reserve_space(fd: int, size: int) -> None:
    """Reserve the space up front: a full disk fails before any byte is downloaded."""
    if size == 0:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            os.ftruncate(fd, size)  # no preallocation here; ENOSPC will surface on write
        else:
            raise


def hash_range(fd: int, offset: int, length: int, hasher: Any, buf: bytearray) -> None:
    """Feed ``length`` bytes of the file from ``offset`` to ``hasher`` through one reused buffer."""
    view = memoryview(buf)
    pos, end = offset, offset + length
    while pos < end:
        n = os.preadv(fd, [view[: min(len(view), end - pos)]], pos)
        if n <= 0:
            raise StorageError(f"could not read back the downloaded bytes at offset {pos}")
        hasher.update(view[:n])
        pos += n


def pread_parts(fd: int, offset: int, size: int, part_size: int) -> Iterator[bytes]:
    pos, end = offset, offset + size
    while pos < end:
        data = os.pread(fd, min(part_size, end - pos), pos)
        if not data:
            return
        pos += len(data)
        yield data


def rechunk(chunks: Iterable[bytes | bytearray | memoryview], part_size: int) -> Iterator[bytes]:
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        while len(buf) >= part_size:
            yield bytes(buf[:part_size])
            del buf[:part_size]
    if buf:
        yield bytes(buf)


def copy_file_verified(
    src: Path,
    dest_path: Path,
    digest: str,
    *,
    progress: Progress | None,
    verify: bool,
) -> None:
    """Copy a local blob file to ``dest_path``: temporary name, verify, fsync, rename.

    Nothing is left at ``dest_path`` unless every byte matched ``digest``.
    """
    try:
        f = open(src, "rb", buffering=0)  # noqa: SIM115 - closed below, after the copy
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise os_error(exc, str(src), "reading") from exc
    with f:
        size = os.fstat(f.fileno()).st_size
        if progress is not None:
            progress.start(size, digest)
        try:
            tmp = write_temp_verified(
                dest_path,
                pread_parts(f.fileno(), 0, size, 8 << 20),
                size,
                digest,
                where=str(src),
                progress=progress,
                verify=verify,
            )
        finally:
            if progress is not None:
                progress.finish()
    try:
        os.replace(tmp, dest_path)
    except OSError as exc:
        remove_quietly(tmp)
        raise os_error(exc, str(dest_path), "renaming into") from exc
    fsync_dir(dest_path.parent)
