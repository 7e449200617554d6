"""The behaviour every BlobStore back end must show.

A back end's test module subclasses :class:`BlobStoreConformance` and
overrides the ``store`` fixture; nothing else.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from modelvault.digest import digest_bytes
from modelvault.errors import (
    BlobNotFoundError,
    FormatError,
    IntegrityError,
    InvalidArgumentError,
)
from modelvault.storage import BlobInfo, BlobStore, CallbackProgress

HOSTILE_DIGESTS = [
    "blake3:../../../../etc/passwd",
    "blake3:" + "A" * 64,
    "blake3:" + "0" * 63,
    "blake3:" + "0" * 62 + "/x",
    "sha256:" + "0" * 63 + "\n",
    "md5:" + "0" * 32,
    "../blobs:" + "0" * 64,
    "",
    "blake3",
    123,
]


def blob(size: int, seed: int = 0) -> tuple[str, bytes]:
    data = (bytes([seed % 251]) + os.urandom(max(size - 1, 0)))[:size]
    return digest_bytes(data), data


class BlobStoreConformance:
    """Shared tests; ``big`` is larger than an S3 test part (5 MiB) so multipart runs."""

    big = 12 * 1024 * 1024 + 123

    @pytest.fixture
    def store(self) -> BlobStore:
        raise NotImplementedError("override the store fixture")

    def test_put_bytes_then_read(self, store: BlobStore) -> None:
        d, data = blob(1000)
        assert not store.exists(d)
        assert store.put_bytes(d, data) is True
        assert store.exists(d)
        info = store.stat(d)
        assert isinstance(info, BlobInfo)
        assert (info.digest, info.size) == (d, 1000)
        assert info.modified.tzinfo is not None
        assert store.read_range(d, 0, 1000) == data
        assert store.read_range(d, 10, 20) == data[10:30]
        assert store.read_range(d, 999, 1) == data[999:]

    def test_second_put_is_skipped(self, store: BlobStore, tmp_path: Path) -> None:
        d, data = blob(5000)
        assert store.put_bytes(d, data) is True
        assert store.put_bytes(d, data) is False
        f = tmp_path / "f"
        f.write_bytes(data)
        calls: list[int] = []
        assert store.put_file(d, f, progress=CallbackProgress(lambda *a: calls.append(1))) is False
        assert calls == []  # nothing was sent
        chunks_used: list[int] = []

        def chunks() -> object:
            chunks_used.append(1)
            yield data

        assert store.put_stream(d, chunks(), len(data)) is False  # type: ignore[arg-type]
        assert chunks_used == []

    def test_big_blob_put_file_and_get_file(self, store: BlobStore, tmp_path: Path) -> None:
        d, data = blob(self.big)
        src = tmp_path / "src.bin"
        src.write_bytes(data)
        seen: list[tuple[int, int]] = []
        assert (
            store.put_file(d, src, progress=CallbackProgress(lambda a, b, _: seen.append((a, b))))
            is True
        )
        assert seen[0] == (0, self.big)
        assert seen[-1] == (self.big, self.big)
        out = tmp_path / "out" / "blob.bin"
        out.parent.mkdir()
        got: list[tuple[int, int]] = []
        store.get_file(d, out, progress=CallbackProgress(lambda a, b, _: got.append((a, b))))
        assert out.read_bytes() == data
        assert got[-1] == (self.big, self.big)
        assert sorted(p.name for p in out.parent.iterdir()) == ["blob.bin"]  # no temp left
        assert store.read_range(d, self.big - 10, 10) == data[-10:]
        assert (
            store.read_range(d, 5 * 1024 * 1024 - 3, 7)
            == data[5 * 1024 * 1024 - 3 : 5 * 1024 * 1024 + 4]
        )

    def test_put_file_slice(self, store: BlobStore, tmp_path: Path) -> None:
        data = os.urandom(10_000)
        src = tmp_path / "src.bin"
        src.write_bytes(data)
        d = digest_bytes(data[100:4100])
        assert store.put_file(d, src, offset=100, length=4000) is True
        assert store.read_range(d, 0, 4000) == data[100:4100]

    def test_put_stream_many_small_chunks(self, store: BlobStore, tmp_path: Path) -> None:
        d, data = blob(self.big, seed=3)
        step = 1_000_003
        chunks = (memoryview(data)[i : i + step] for i in range(0, len(data), step))
        assert store.put_stream(d, chunks, len(data)) is True
        out = tmp_path / "o"
        store.get_file(d, out)
        assert out.read_bytes() == data

    def test_sha256_and_empty_blobs(self, store: BlobStore, tmp_path: Path) -> None:
        data = b"sha256 content"
        d = digest_bytes(data, "sha256")
        assert store.put_bytes(d, data) is True
        assert store.read_range(d, 0, len(data)) == data
        empty = digest_bytes(b"")
        assert store.put_bytes(empty, b"") is True
        info = store.stat(empty)
        assert info is not None
        assert info.size == 0
        assert store.read_range(empty, 0, 0) == b""
        out = tmp_path / "empty"
        store.get_file(empty, out)
        assert out.read_bytes() == b""

    def test_wrong_bytes_are_refused(self, store: BlobStore, tmp_path: Path) -> None:
        d, _ = blob(2000)
        with pytest.raises(IntegrityError, match=d) as err:
            store.put_bytes(d, b"x" * 2000)
        assert err.value.expected == d
        assert not store.exists(d)
        big_d, big_data = blob(self.big)
        src = tmp_path / "bad"
        src.write_bytes(
            big_data[:-1] + bytes([big_data[-1] ^ 0xFF])
        )  # always a different last byte
        with pytest.raises(IntegrityError, match=big_d):
            store.put_file(big_d, src)
        assert not store.exists(big_d)
        assert [b.digest for b in store.list()] == []

    def test_adopt_a_file_the_caller_hashed(self, store: BlobStore, tmp_path: Path) -> None:
        d, data = blob(self.big)
        where = store.staging_dir() or tmp_path
        staged = where / "staged.part"
        staged.write_bytes(data)
        assert store.adopt(d, staged, len(data)) is True
        assert not staged.exists()  # consumed
        assert store.read_range(d, self.big - 100, 100) == data[-100:]
        staged.write_bytes(data)
        assert store.adopt(d, staged, len(data)) is False  # present already: consumed all the same
        assert not staged.exists()
        assert [b.digest for b in store.list()] == [d]

    def test_adopt_refuses_a_file_of_another_size(self, store: BlobStore, tmp_path: Path) -> None:
        d, data = blob(1000)
        staged = (store.staging_dir() or tmp_path) / "short.part"
        staged.write_bytes(data[:-1])
        with pytest.raises(IntegrityError, match="999 bytes") as err:
            store.adopt(d, staged, len(data))
        assert "\n" not in str(err.value)
        assert not staged.exists()
        assert not store.exists(d)
        with pytest.raises(InvalidArgumentError, match="no such file"):
            store.adopt(d, tmp_path / "absent", 1000)

    def test_wrong_size_is_refused(self, store: BlobStore) -> None:
        d, data = blob(3000)
        with pytest.raises(IntegrityError, match="bytes"):
            store.put_stream(d, [data], 2999)
        with pytest.raises(IntegrityError, match="bytes"):
            store.put_stream(d, [data[:100]], 3000)
        assert not store.exists(d)

    def test_missing_blob(self, store: BlobStore, tmp_path: Path) -> None:
        d, _ = blob(10)
        assert store.stat(d) is None
        assert store.exists(d) is False
        assert store.delete(d) is False
        with pytest.raises(BlobNotFoundError, match=d):
            store.read_range(d, 0, 1)
        dest = tmp_path / "dest"
        with pytest.raises(BlobNotFoundError, match=d) as err:
            store.get_file(d, dest)
        assert err.value.digest == d
        assert list(tmp_path.iterdir()) == []

    def test_bad_ranges(self, store: BlobStore) -> None:
        d, data = blob(100)
        store.put_bytes(d, data)
        for off, length in [(-1, 1), (0, -1), (90, 11), (101, 0), (100, 1)]:
            with pytest.raises(InvalidArgumentError):
                store.read_range(d, off, length)
        assert store.read_range(d, 100, 0) == b""

    def test_delete(self, store: BlobStore) -> None:
        d, data = blob(100)
        store.put_bytes(d, data)
        assert store.delete(d) is True
        assert not store.exists(d)
        assert store.delete(d) is False
        assert store.put_bytes(d, data) is True  # can come back

    def test_list(self, store: BlobStore) -> None:
        assert list(store.list()) == []
        made = {}
        for i in range(5):
            d, data = blob(100 + i, seed=i)
            store.put_bytes(d, data)
            made[d] = len(data)
        listed = {b.digest: b.size for b in store.list()}
        assert listed == made

    def test_concurrent_writers_of_one_blob(self, store: BlobStore) -> None:
        d, data = blob(self.big, seed=7)
        results: list[bool] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(4)

        def write() -> None:
            try:
                barrier.wait()
                results.append(store.put_bytes(d, data))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(results) == 4
        assert any(results)
        assert store.read_range(d, 0, len(data)) == data
        assert [b.digest for b in store.list()] == [d]

    def test_local_path(self, store: BlobStore) -> None:
        d, data = blob(100)
        store.put_bytes(d, data)
        path = store.local_path(d)
        assert path is None or path.read_bytes() == data

    def test_put_file_bad_input(self, store: BlobStore, tmp_path: Path) -> None:
        d, data = blob(100)
        with pytest.raises(InvalidArgumentError, match="no such file"):
            store.put_file(d, tmp_path / "missing")
        src = tmp_path / "src"
        src.write_bytes(data)
        with pytest.raises(InvalidArgumentError, match="has 100 bytes"):
            store.put_file(d, src, offset=50, length=60)
        with pytest.raises(InvalidArgumentError):
            store.put_file(d, src, offset=-1)
        assert not store.exists(d)

    @pytest.mark.parametrize("bad", HOSTILE_DIGESTS, ids=repr)
    def test_hostile_digests(self, store: BlobStore, tmp_path: Path, bad: object) -> None:
        for call in (
            lambda: store.exists(bad),  # type: ignore[arg-type]
            lambda: store.stat(bad),  # type: ignore[arg-type]
            lambda: store.put_bytes(bad, b"x"),  # type: ignore[arg-type]
            lambda: store.read_range(bad, 0, 1),  # type: ignore[arg-type]
            lambda: store.get_file(bad, tmp_path / "x"),  # type: ignore[arg-type]
            lambda: store.delete(bad),  # type: ignore[arg-type]
            lambda: store.local_path(bad),  # type: ignore[arg-type]
        ):
            with pytest.raises(FormatError, match="digest"):
                call()
        assert list(tmp_path.iterdir()) == []
        assert list(store.list()) == []
