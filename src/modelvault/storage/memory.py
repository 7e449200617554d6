"""An in-memory blob store, for tests of the layers above.

``memory://NAME`` opens the same store for the same NAME within a process,
so a vault and a test can share one; ``MemoryStore()`` is private.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone

from ..errors import BlobNotFoundError, InvalidArgumentError
from ..digest import new_hasher, parse_digest
from ._io import check_digest
from .base import BlobInfo, BlobStore, Progress, check_range

__all__ = ["MemoryStore"]

_NAMED: dict[str, MemoryStore] = {}
_NAMED_LOCK = threading.Lock()


class MemoryStore(BlobStore):
    """Blobs in a dict, guarded by a lock."""

    def __init__(self, name: str = "") -> None:
        self.url = f"memory://{name}"
        self._blobs: dict[str, tuple[bytes, datetime]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        """``memory://NAME``: the process-wide store of that name (created on first use)."""
        if not url.startswith("memory://"):
            raise InvalidArgumentError(f"{url!r} is not a memory:// URL")
        name = url[len("memory://") :].strip("/")
        with _NAMED_LOCK:
            if name not in _NAMED:
                _NAMED[name] = cls(name)
            return _NAMED[name]

    def stat(self, digest: str) -> BlobInfo | None:
        parse_digest(digest)
        with self._lock:
            entry = self._blobs.get(digest)
        return None if entry is None else BlobInfo(digest, len(entry[0]), entry[1])

    def put_stream(
        self,
        digest: str,
        chunks: Iterable[bytes | bytearray | memoryview],
        size: int,
        *,
        progress: Progress | None = None,
    ) -> bool:
        algo, _ = parse_digest(digest)
        check_range(0, size)
        if self.exists(digest):
            return False
        if progress is not None:
            progress.start(size, digest)
        try:
            hasher = new_hasher(algo)
            buf = bytearray()
            for chunk in chunks:
                hasher.update(chunk)
                buf += chunk
                if progress is not None:
                    progress.advance(len(chunk))
                if len(buf) > size:
                    break
            check_digest(digest, hasher.digest_str(), len(buf), size, self.where(digest))
        finally:
            if progress is not None:
                progress.finish()
        with self._lock:
            if digest in self._blobs:
                return False
            self._blobs[digest] = (bytes(buf), datetime.now(timezone.utc))
        return True

    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        parse_digest(digest)
        check_range(offset, length)
        with self._lock:
            entry = self._blobs.get(digest)
        if entry is None:
            raise BlobNotFoundError(digest, self.url)
        data = entry[0]
        if offset + length > len(data):
            raise InvalidArgumentError(
                f"range {offset}+{length} is past the end of blob {digest} ({len(data)} bytes)"
            )
        return data[offset : offset + length]

    def delete(self, digest: str) -> bool:
        parse_digest(digest)
        with self._lock:
            return self._blobs.pop(digest, None) is not None

    def list(self) -> Iterator[BlobInfo]:
        with self._lock:
            items = list(self._blobs.items())
        for digest, (data, modified) in items:
            yield BlobInfo(digest, len(data), modified)
