"""A blob store in an S3 bucket: ``s3://bucket/prefix`` -> ``<prefix>/blobs/<algo>/<hex[:2]>/<hex>``.

Endpoint, region and credentials come from the standard AWS settings
(``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, profiles),
so one code path serves AWS, SeaweedFS, MinIO and Ceph. Part size and
concurrency come from ``MVAULT_S3_PART_SIZE`` / ``MVAULT_S3_CONCURRENCY``.

Upload: the source is read part by part on the calling thread, hashed in
order, and each part is handed to a pool of uploaders; the multipart upload is
completed only when the whole digest matches, and aborted on any failure, so a
half-written or wrong object never becomes visible. Each part also carries an
S3 integrity checksum the server verifies before accepting it
(``MVAULT_S3_CHECKSUM``: ``CRC32`` by default, as boto3 itself sends;
``SHA256`` costs a second SHA-256 pass over every byte, about 0.5 s of CPU
per GiB, and ``CRC32C`` needs ``botocore[crt]``). SeaweedFS verifies both
CRC32 and SHA256 and answers BadDigest on a mismatch. End to end, the blob
digest checked on upload and on download is what guarantees the bytes.

Download: parallel ranged GETs pinned to the object's ETag (an object
replaced mid-download fails instead of mixing two versions), written with
``os.pwrite`` into a temporary file next to the destination, hashed in order
as parts arrive, renamed into place only after the digest matches.

This module (and _s3_errors, which only it imports) is the only one that
imports boto3 or botocore.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal, TypeVar

import boto3
import botocore.exceptions as bexc
from botocore.config import Config

from ..config import settings
from ..digest import beside_io_threads, new_hasher, parse_digest
from ..errors import (
    BlobNotFoundError,
    InvalidArgumentError,
    StorageError,
    StoreAccessError,
)
from ._io import (
    check_digest,
    hash_range,
    pread_parts,
    rechunk,
    remove_quietly,
    reserve_space,
    start_writeback,
)
from ._s3_errors import MISSING_KEY_CODES, translate
from .base import (
    BlobInfo,
    BlobStore,
    Progress,
    _file_extent,
    blob_relpath,
    check_range,
    fsync_dir,
    os_error,
    temp_path_for,
)

__all__ = ["S3Store"]

T = TypeVar("T")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._/-]*$")
S3_CHECKSUMS = ("CRC32", "SHA256", "CRC32C", "SHA1", "CRC64NVME")
#: Downloads move through memory in pieces of this size (read, write, hash).
_STREAM_CHUNK = 1024 * 1024
_WRITEBACK_STEP = 8 * 1024 * 1024


class UploadCancelledError(Exception):
    """Raised inside a part's send once its upload was given up (Ctrl-C, an error elsewhere)."""


class _PartBody(io.RawIOBase):
    """One part's bytes for botocore to send, in small reads that stop once ``cancelled`` is set.

    http.client sends a file body 8 KiB at a time, so an interrupted push
    stops sending within milliseconds instead of finishing every part in
    flight; botocore seeks back to the start for checksums and retries.
    """

    def __init__(self, data: bytes, cancelled: threading.Event) -> None:
        self._view = memoryview(data)
        self._pos = 0
        self._cancelled = cancelled

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, min(len(self._view), base + offset))
        return self._pos

    def readinto(self, b: Any) -> int:
        if self._cancelled.is_set():
            raise UploadCancelledError("the upload was cancelled")
        n = min(len(b), len(self._view) - self._pos, 1 << 16)
        b[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n


class S3Store(BlobStore):
    """Content-addressed blobs in an S3 bucket.

    ``part_size``, ``concurrency`` and ``checksum`` default to the
    ``MVAULT_S3_*`` settings. ``max_attempts`` counts every try of one request
    (botocore "standard" retries: 5xx, throttling and connection errors, with
    jittered exponential backoff); with the 5 s connect timeout it bounds how
    long a dead endpoint can hold a caller. ``client_options`` go to
    ``boto3.client`` (``endpoint_url``, keys) for callers that do not use the
    environment.

    >>> store = S3Store.from_url("s3://team-models/vault")  # doctest: +SKIP
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        part_size: int | None = None,
        concurrency: int | None = None,
        checksum: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 4,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        if not _BUCKET_RE.match(bucket) or ".." in bucket:
            raise InvalidArgumentError(f"{bucket!r} is not a valid S3 bucket name")
        prefix = prefix.strip("/")
        if not _PREFIX_RE.match(prefix) or any(
            p in ("", ".", "..") for p in prefix.split("/") if prefix
        ):
            raise InvalidArgumentError(
                f"S3 prefix {prefix!r} is invalid; use letters, digits and . _ - / without empty or '..' parts"
            )
        cfg = settings()
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.part_size = part_size or cfg.s3_part_size
        self.concurrency = concurrency or cfg.s3_concurrency
        if self.part_size < 5 * 1024 * 1024:
            raise InvalidArgumentError("S3 part size must be at least 5MiB")
        checksum = checksum or cfg.s3_checksum
        if checksum not in S3_CHECKSUMS:
            raise InvalidArgumentError(
                f"unknown S3 checksum algorithm {checksum!r}; use one of {', '.join(S3_CHECKSUMS)}"
            )
        self.checksum = checksum
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._bucket_checked = False
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        options = dict(client_options or {})

        def make(addressing: Literal["auto", "path"]) -> Any:
            config = Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"mode": "standard", "total_max_attempts": max_attempts},
                max_pool_connections=max(10, 2 * self.concurrency + 2),
                s3={"addressing_style": addressing},
                tcp_keepalive=True,
            )
            return boto3.session.Session().client("s3", config=config, **options)

        try:
            client = make("auto")
            self.endpoint = str(client.meta.endpoint_url)
            if "amazonaws.com" not in self.endpoint:
                # SeaweedFS, MinIO, Ceph: no per-bucket DNS names on a plain endpoint.
                client = make("path")
        except bexc.BotoCoreError as exc:
            raise StoreAccessError(f"cannot configure the S3 client for {self.url}: {exc}") from exc
        self.client = client

    @classmethod
    def from_url(cls, url: str) -> S3Store:
        """``s3://bucket`` or ``s3://bucket/prefix``."""
        if not url.startswith("s3://"):
            raise InvalidArgumentError(f"{url!r} is not an s3:// URL")
        rest = url[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise InvalidArgumentError(f"{url!r} names no bucket; use s3://bucket/prefix")
        return cls(bucket, prefix)

    # ---- plumbing -------------------------------------------------------

    def key(self, digest: str) -> str:
        """The object key of a blob."""
        return f"{self.prefix}{blob_relpath(digest)}"

    def where(self, digest: str) -> str:
        return f"s3://{self.bucket}/{self.key(digest)} (endpoint {self.endpoint})"

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="mvault-s3")
            return self._pool

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        with contextlib.suppress(Exception):
            self.client.close()

    def _translate(self, exc: Exception, doing: str, digest: str | None = None) -> Exception:
        """A botocore error as the most specific modelvault error."""
        return translate(
            exc, doing, digest, bucket=self.bucket, url=self.url, endpoint=self.endpoint
        )

    def _call(self, doing: str, digest: str | None, fn: Callable[..., T], **kwargs: Any) -> T:
        try:
            return fn(**kwargs)
        except (bexc.BotoCoreError, bexc.ClientError) as exc:
            raise self._translate(exc, doing, digest) from exc

    def _check_bucket(self) -> None:
        """A 404 on HEAD can mean a missing bucket; say so instead of 'blob missing'."""
        if self._bucket_checked:
            return
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except bexc.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                exc.response.setdefault("Error", {})["Code"] = "NoSuchBucket"
            raise self._translate(exc, "checking the bucket") from exc
        except bexc.BotoCoreError as exc:
            raise self._translate(exc, "checking the bucket") from exc
        self._bucket_checked = True

    def _head(self, digest: str) -> dict[str, Any] | None:
        key = self.key(digest)
        try:
            head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=key)
        except bexc.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or exc.response.get("Error", {}).get("Code") in MISSING_KEY_CODES:
                self._check_bucket()
                return None
            raise self._translate(exc, "looking up a blob", digest) from exc
        except bexc.BotoCoreError as exc:
            raise self._translate(exc, "looking up a blob", digest) from exc
        self._bucket_checked = True
        return head

    # ---- primitives -----------------------------------------------------

    def stat(self, digest: str) -> BlobInfo | None:
        head = self._head(digest)
        if head is None:
            return None
        return BlobInfo(digest, int(head["ContentLength"]), _utc(head["LastModified"]))

    def put_stream(
        self,
        digest: str,
        chunks: Iterable[bytes | bytearray | memoryview],
        size: int,
        *,
        progress: Progress | None = None,
    ) -> bool:
        parse_digest(digest)
        check_range(0, size)
        if self._head(digest) is not None:
            return False
        return self._upload(digest, rechunk(chunks, self.part_size), size, progress)

    def put_file(
        self,
        digest: str,
        path: str | os.PathLike[str],
        *,
        offset: int = 0,
        length: int | None = None,
        progress: Progress | None = None,
    ) -> bool:
        parse_digest(digest)
        p = Path(path)
        size = _file_extent(p, offset, length)
        if self._head(digest) is not None:
            return False
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError as exc:
            raise os_error(exc, str(p), "reading") from exc
        try:
            return self._upload(
                digest, pread_parts(fd, offset, size, self.part_size), size, progress
            )
        finally:
            os.close(fd)

    def _upload(
        self, digest: str, parts: Iterator[bytes], size: int, progress: Progress | None
    ) -> bool:
        algo, _ = parse_digest(digest)
        hasher = new_hasher(algo, threads=beside_io_threads())  # beside the upload threads
        key = self.key(digest)
        given = f"the bytes given for {self.where(digest)}"
        if progress is not None:
            progress.start(size, digest)
        try:
            if size <= self.part_size:
                data = b"".join(parts)
                hasher.update(data)
                check_digest(digest, hasher.digest_str(), len(data), size, given)
                self._call(
                    "uploading a blob",
                    digest,
                    self.client.put_object,
                    Bucket=self.bucket,
                    Key=key,
                    Body=data,
                    ChecksumAlgorithm=self.checksum,
                )
                if progress is not None:
                    progress.advance(size)
                return True
            self._multipart(digest, key, parts, size, hasher, given, progress)
            return True
        finally:
            if progress is not None:
                progress.finish()

    def _multipart(
        self,
        digest: str,
        key: str,
        parts: Iterator[bytes],
        size: int,
        hasher: Any,
        given: str,
        progress: Progress | None,
    ) -> None:
        created = self._call(
            "starting a multipart upload",
            digest,
            self.client.create_multipart_upload,
            Bucket=self.bucket,
            Key=key,
            ChecksumAlgorithm=self.checksum,
        )
        upload_id = created["UploadId"]
        pool = self._executor()
        field = f"Checksum{self.checksum}"
        completed = False
        pending: deque[Future[dict[str, Any]]] = deque()
        done: list[dict[str, Any]] = []
        cancelled = threading.Event()

        def send(number: int, data: bytes) -> dict[str, Any]:
            resp = self.client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=_PartBody(data, cancelled),
                ChecksumAlgorithm=self.checksum,
            )
            if progress is not None:
                progress.advance(len(data))
            part = {"PartNumber": number, "ETag": resp["ETag"]}
            if resp.get(field):
                part[field] = resp[field]
            return part

        try:
            got = 0
            for number, data in enumerate(parts, 1):
                hasher.update(data)
                got += len(data)
                if got >= size:
                    # Verify before the last part goes out: a wrong source never completes.
                    check_digest(digest, hasher.digest_str(), got, size, given)
                while len(pending) >= self.concurrency:
                    done.append(pending.popleft().result())
                pending.append(pool.submit(send, number, data))
            check_digest(digest, hasher.digest_str(), got, size, given)
            while pending:
                done.append(pending.popleft().result())
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": sorted(done, key=lambda p: int(p["PartNumber"]))},
            )
            completed = True
        except (bexc.BotoCoreError, bexc.ClientError) as exc:
            raise self._translate(exc, "uploading a blob", digest) from exc
        finally:
            if not completed:
                # Stop the parts in flight (their bodies refuse to give more bytes),
                # drop the queued ones, and wait a moment for the senders to notice.
                cancelled.set()
                for fut in pending:
                    fut.cancel()
                wait(pending, timeout=1.0)
                # Best effort: when the server is gone this fails too, and
                # cleanup_incomplete_uploads() removes the upload later.
                with contextlib.suppress(Exception):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload_id
                    )

    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        parse_digest(digest)
        check_range(offset, length)
        if length == 0:
            info = self.stat(digest)
            if info is None:
                raise BlobNotFoundError(digest, self.url)
            if offset > info.size:
                raise InvalidArgumentError(
                    f"range {offset}+0 is past the end of blob {digest} ({info.size} bytes)"
                )
            return b""
        try:
            resp = self.client.get_object(
                Bucket=self.bucket,
                Key=self.key(digest),
                Range=f"bytes={offset}-{offset + length - 1}",
            )
            data: bytes = resp["Body"].read()
        except bexc.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                self._check_bucket()
            raise self._translate(exc, "reading a blob", digest) from exc
        except bexc.BotoCoreError as exc:
            raise self._translate(exc, "reading a blob", digest) from exc
        if len(data) != length:
            raise InvalidArgumentError(
                f"range {offset}+{length} is past the end of blob {digest} in {self.url}"
            )
        return data

    def range_reader(self, digest: str, size: int) -> _S3Range:
        """Ranged GETs of one blob into caller memory (a GPU load streams through these)."""
        parse_digest(digest)
        return _S3Range(self, digest)

    def get_file(
        self,
        digest: str,
        dest: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        verify: bool = True,
    ) -> None:
        algo, _ = parse_digest(digest)
        dest_path = Path(dest)
        head = self._head(digest)
        if head is None:
            raise BlobNotFoundError(digest, self.url)
        size = int(head["ContentLength"])
        etag = str(head["ETag"])
        key = self.key(digest)
        where = self.where(digest)
        tmp = temp_path_for(dest_path)
        if progress is not None:
            progress.start(size, digest)
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            if progress is not None:
                progress.finish()
            raise os_error(exc, str(dest_path), "writing") from exc
        pending: list[Future[None]] = []
        try:
            reserve_space(fd, size)

            def fetch(offset: int, length: int) -> None:
                # Stream the range straight into place in small pieces: no
                # part-sized buffers to allocate and copy, which costs more
                # than the network on a loaded machine.
                resp = self.client.get_object(
                    Bucket=self.bucket,
                    Key=key,
                    Range=f"bytes={offset}-{offset + length - 1}",
                    IfMatch=etag,
                )
                body = resp["Body"]
                pos, end = offset, offset + length
                flushed = pos
                while pos < end:
                    data = body.read(min(_STREAM_CHUNK, end - pos))
                    if not data:
                        break
                    view = memoryview(data)
                    while view:
                        n = os.pwrite(fd, view, pos)
                        view = view[n:]
                        pos += n
                    if pos - flushed >= _WRITEBACK_STEP:
                        # Keep the disk busy while the network is: the final
                        # fsync then waits for the last pieces only.
                        start_writeback(fd, flushed, pos - flushed)
                        flushed = pos
                    if progress is not None:
                        progress.advance(len(data))
                start_writeback(fd, flushed, pos - flushed)
                if pos != end:
                    raise StorageError(
                        f"S3 returned {pos - offset} bytes for a {length}-byte range of {where}"
                    )

            pool = self._executor()
            step = self.part_size
            ranges = [(o, min(step, size - o)) for o in range(0, size, step)]
            pending = [pool.submit(fetch, o, n) for o, n in ranges]
            # Hash in order as parts land, reading them back from the page cache.
            hasher = new_hasher(algo) if verify else None
            buf = bytearray(min(_STREAM_CHUNK * 8, max(size, 1)))
            for (offset, length), fut in zip(ranges, pending):
                fut.result()
                if hasher is not None:
                    hash_range(fd, offset, length, hasher, buf)
            os.fsync(fd)
            os.close(fd)
            fd = -1
            actual = hasher.digest_str() if hasher is not None else digest
            check_digest(digest, actual, size, size, where)
            os.replace(tmp, dest_path)
            fsync_dir(dest_path.parent)
        except BaseException as exc:
            for fut in pending:
                fut.cancel()
            for fut in pending:
                with contextlib.suppress(BaseException):
                    fut.result()
            if fd >= 0:
                os.close(fd)
            remove_quietly(tmp)
            if isinstance(exc, bexc.ClientError) and (
                exc.response.get("Error", {}).get("Code") == "PreconditionFailed"
            ):
                raise StorageError(
                    f"blob {digest} was replaced in {where} during the download",
                    hint="the stored copy changed under us; check who writes to the bucket, then retry",
                ) from exc
            if isinstance(exc, (bexc.BotoCoreError, bexc.ClientError)):
                raise self._translate(exc, "downloading a blob", digest) from exc
            if isinstance(exc, OSError) and not isinstance(exc, StorageError):
                raise os_error(exc, str(dest_path), "writing") from exc
            raise
        finally:
            if progress is not None:
                progress.finish()

    def delete(self, digest: str) -> bool:
        if self._head(digest) is None:
            return False
        self._call(
            "deleting a blob",
            digest,
            self.client.delete_object,
            Bucket=self.bucket,
            Key=self.key(digest),
        )
        return True

    def list(self) -> Iterator[BlobInfo]:
        start = f"{self.prefix}blobs/"
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=start):
                for obj in page.get("Contents", []):
                    parts = str(obj["Key"])[len(start) :].split("/")
                    if len(parts) != 3:
                        continue
                    digest = f"{parts[0]}:{parts[2]}"
                    try:
                        parse_digest(digest)
                    except ValueError:
                        continue  # a foreign object under our prefix
                    if parts[2][:2] != parts[1]:
                        continue
                    yield BlobInfo(digest, int(obj["Size"]), _utc(obj["LastModified"]))
        except (bexc.BotoCoreError, bexc.ClientError) as exc:
            raise self._translate(exc, "listing blobs") from exc

    def cleanup_incomplete_uploads(self, older_than: timedelta = timedelta(days=1)) -> int:
        """Abort multipart uploads under this store's prefix started before ``older_than`` ago.

        An upload interrupted by a crash or a lost server cannot always be
        aborted at the time; its parts cost storage until aborted. Returns
        how many were aborted.
        """
        cutoff = datetime.now(timezone.utc) - older_than
        aborted = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}blobs/"):
                for up in page.get("Uploads", []):
                    if _utc(up["Initiated"]) <= cutoff:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]
                        )
                        aborted += 1
        except (bexc.BotoCoreError, bexc.ClientError) as exc:
            raise self._translate(exc, "cleaning up incomplete uploads") from exc
        return aborted


class _S3Range:
    """``read_into`` a ranged GET of one blob; boto3 clients are thread-safe, so readers share one."""

    def __init__(self, store: S3Store, digest: str) -> None:
        self._store = store
        self._digest = digest
        self._key = store.key(digest)

    def read_into(self, view: memoryview, offset: int) -> int:
        if not len(view):
            return 0
        store = self._store
        try:
            resp = store.client.get_object(
                Bucket=store.bucket, Key=self._key, Range=f"bytes={offset}-{offset + len(view) - 1}"
            )
            body = resp["Body"]
            # The urllib3 response under botocore's StreamingBody reads into our
            # buffer directly: no bytes object per read, no second copy.
            raw = getattr(body, "_raw_stream", None)
            readinto = getattr(raw, "readinto", None)
            got = 0
            while got < len(view):
                if readinto is not None:
                    n = readinto(view[got:])
                else:
                    data = body.read(len(view) - got)
                    n = len(data)
                    view[got : got + n] = data
                if not n:
                    break
                got += n
            return got
        except bexc.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 416:
                return 0  # the range starts past the end: a short blob, reported by the caller
            if status == 404:
                store._check_bucket()
            raise store._translate(exc, "reading a blob", self._digest) from exc
        except bexc.BotoCoreError as exc:
            raise store._translate(exc, "reading a blob", self._digest) from exc


def _utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return (
            value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
        )
    return datetime.now(timezone.utc)
