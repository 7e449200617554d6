"""A blob store in a local directory: ``<root>/blobs/<algo>/<hex[:2]>/<hex>``.

Writes go to ``<root>/tmp/`` (same file system), are hashed while they are
copied, fsynced, and then hard-linked into place: the link fails if another
process published the same blob first, so exactly one writer wins, readers
never see half a file, and a crash leaves at most a stray temporary file.
Published blobs are read-only (0444); the loader reads them in place through
:meth:`LocalStore.local_path`. A caller that wrote and hashed a blob's file
itself (an OCI pull, in parallel ranged parts) writes it in
:meth:`LocalStore.staging_dir` and hands it over with :meth:`LocalStore.adopt`:
the same publication, without a second copy or hash.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..digest import ALGORITHMS, parse_digest
from ..errors import BlobNotFoundError, InvalidArgumentError, StorageError
from ._io import copy_file_verified, remove_quietly, write_temp_verified
from .base import (
    BlobInfo,
    BlobStore,
    Progress,
    blob_relpath,
    check_adopted_size,
    check_range,
    fsync_dir,
    os_error,
)

__all__ = ["LocalStore"]


class LocalStore(BlobStore):
    """Content-addressed blobs under a directory (created on first write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = f"file://{self.root}"

    @classmethod
    def from_url(cls, url: str) -> LocalStore:
        """``file:///abs/path`` or a plain path."""
        if "://" not in url:
            return cls(url)
        parsed = urlparse(url)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise InvalidArgumentError(
                f"{url!r} is not a local store URL; use file:///absolute/path"
            )
        if not parsed.path:
            raise InvalidArgumentError(f"{url!r} names no directory; use file:///absolute/path")
        return cls(unquote(parsed.path))

    def _path(self, digest: str) -> Path:
        return self.root / blob_relpath(digest)

    def where(self, digest: str) -> str:
        return str(self._path(digest))

    def stat(self, digest: str) -> BlobInfo | None:
        path = self._path(digest)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise os_error(exc, str(path), "reading") from exc
        return BlobInfo(digest, st.st_size, datetime.fromtimestamp(st.st_mtime, timezone.utc))

    holds_files = True

    def local_path(self, digest: str) -> Path | None:
        path = self._path(digest)
        return path if path.is_file() else None

    def put_stream(
        self,
        digest: str,
        chunks: Iterable[bytes | bytearray | memoryview],
        size: int,
        *,
        progress: Progress | None = None,
    ) -> bool:
        final = self._path(digest)
        check_range(0, size)
        if final.exists():
            return False
        tmp_dir = self.root / "tmp"
        try:
            tmp_dir.mkdir(parents=True, exist_ok=True)
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise os_error(exc, str(self.root), "creating the store directory") from exc
        if progress is not None:
            progress.start(size, digest)
        try:
            tmp = write_temp_verified(
                final,
                chunks,
                size,
                digest,
                where=f"the bytes given for {final}",
                progress=progress,
                temp=tmp_dir / f"{final.name}.{os.urandom(6).hex()}",
            )
        finally:
            if progress is not None:
                progress.finish()
        return self._publish(tmp, final)

    def staging_dir(self) -> Path:
        """``<root>/tmp/``: the store's own file system, so :meth:`adopt` is a rename."""
        tmp_dir = self.root / "tmp"
        try:
            tmp_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise os_error(exc, str(self.root), "creating the store directory") from exc
        return tmp_dir

    def adopt(self, digest: str, path: str | os.PathLike[str], size: int) -> bool:
        """Publish a file of :meth:`staging_dir` that the caller has hashed to ``digest``.

        No copy and no second hash: one fsync of the file, then the same
        hard link (or rename) into place as every write, and the directory
        fsynced. A file elsewhere is stored the generic way (copied, hashed).
        """
        final = self._path(digest)
        tmp = Path(path)
        if tmp.parent.resolve() != (self.root / "tmp").resolve():
            return super().adopt(digest, tmp, size)
        try:
            check_adopted_size(tmp, digest, size)
            if final.exists():
                remove_quietly(tmp)
                return False
            final.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as exc:
            remove_quietly(tmp)
            if isinstance(exc, OSError) and not isinstance(exc, StorageError):
                raise os_error(exc, str(final), "publishing") from exc
            raise
        return self._publish(tmp, final)

    def _publish(self, tmp: Path, final: Path) -> bool:
        """Make a verified temporary file the blob; False if another writer won."""
        try:
            os.chmod(tmp, 0o444)
            try:
                os.link(tmp, final)
            except FileExistsError:
                return False  # same digest, same bytes: the other writer's copy stands
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
                    raise
                # No hard links here (some network file systems): rename is
                # still atomic, and a concurrent writer renames identical bytes.
                os.replace(tmp, final)
            fsync_dir(final.parent)
            return True
        except OSError as exc:
            raise os_error(exc, str(final), "publishing") from exc
        finally:
            remove_quietly(tmp)

    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        path = self._path(digest)
        check_range(offset, length)
        try:
            with open(path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                data = os.pread(f.fileno(), length, offset) if offset + length <= size else b""
        except FileNotFoundError:
            raise BlobNotFoundError(digest, self.url) from None
        except OSError as exc:
            raise os_error(exc, str(path), "reading") from exc
        if offset + length > size or len(data) != length:
            raise InvalidArgumentError(
                f"range {offset}+{length} is past the end of blob {digest} ({size} bytes)"
            )
        return data

    def get_file(
        self,
        digest: str,
        dest: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        verify: bool = True,
    ) -> None:
        try:
            copy_file_verified(
                self._path(digest), Path(dest), digest, progress=progress, verify=verify
            )
        except FileNotFoundError:
            raise BlobNotFoundError(digest, self.url) from None

    def delete(self, digest: str) -> bool:
        path = self._path(digest)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise os_error(exc, str(path), "deleting") from exc
        return True

    def list(self) -> Iterator[BlobInfo]:
        blobs = self.root / "blobs"
        if not blobs.is_dir():
            return  # nothing written yet
        for algo in sorted(ALGORITHMS):
            top = blobs / algo
            if not top.is_dir():
                continue
            for sub in sorted(top.iterdir()):
                if not sub.is_dir():
                    continue
                for entry in os.scandir(sub):
                    digest = f"{algo}:{entry.name}"
                    try:
                        parse_digest(digest)
                    except ValueError:
                        continue  # not a blob (a stray file); never ours to list
                    try:
                        if entry.name[:2] != sub.name or not entry.is_file():
                            continue
                        st = entry.stat()
                    except FileNotFoundError:
                        continue  # deleted since the directory was read (another gc)
                    yield BlobInfo(
                        digest, st.st_size, datetime.fromtimestamp(st.st_mtime, timezone.utc)
                    )
