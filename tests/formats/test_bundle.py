"""Bundles and directory containers: round trips, streaming, verification, clean failure."""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelvault.digest import digest_bytes, read_verified_into
from modelvault.errors import (
    BlobNotFoundError,
    IntegrityError,
    InvalidArgumentError,
    ManifestError,
    PayloadMismatchError,
)
from modelvault.formats.bundle import PREAMBLE_SIZE, Bundle, stream_blobs, write_bundle
from modelvault.formats.container import (
    BlobSource,
    BytesSource,
    DirectorySource,
    Draft,
    FileSource,
    read_blob,
    write_directory,
)

from .conftest import listing, small_draft


def test_round_trip_and_layout(tmp_path: Path) -> None:
    path = tmp_path / "m.mvpk"
    m = write_bundle(small_draft(), path)
    b = Bundle.open(path)
    assert b.manifest == m
    assert b.digest == m.digest
    assert b.manifest_bytes == m.encode()
    b.verify()
    for i, ref in enumerate(m.blobs):
        off, size = b.extents[i]
        assert off % 4096 == 0
        assert size == ref.size
        data = b.read_blob(i)
        assert digest_bytes(data) == ref.digest
    assert b.read_blob(2) == b"graph bytes\n" * 100  # after the two tensors' blobs
    assert os.path.getsize(path) == b.extents[-1][0] + b.extents[-1][1]
    assert listing(tmp_path) == ["m.mvpk"]


def test_ref_is_recorded_outside_the_manifest(tmp_path: Path) -> None:
    plain = write_bundle(small_draft(), tmp_path / "a.mvpk")
    tagged = write_bundle(
        small_draft(), tmp_path / "b.mvpk", ref={"name": "resnet", "version": "1.2.3"}
    )
    assert plain.digest == tagged.digest
    assert Bundle.open(tmp_path / "a.mvpk").ref is None
    b = Bundle.open(tmp_path / "b.mvpk")
    assert b.ref == {"name": "resnet", "version": "1.2.3"}
    b.verify()
    with pytest.raises(InvalidArgumentError, match="ref must map exactly"):
        write_bundle(small_draft(), tmp_path / "c.mvpk", ref={"name": "x"})
    assert not (tmp_path / "c.mvpk").exists()


def test_same_digests_in_bundle_and_directory(tmp_path: Path) -> None:
    m1 = write_bundle(small_draft(), tmp_path / "a.mvpk")
    src = write_directory(small_draft(), tmp_path / "dir")
    assert src.manifest == m1
    again = DirectorySource.open(tmp_path / "dir")
    assert again.manifest.digest == m1.digest
    for i, ref in enumerate(m1.blobs):
        assert read_blob(again, i) == Bundle.open(tmp_path / "a.mvpk").read_blob(i)
        assert (tmp_path / "dir" / ref.digest.replace(":", "-")).exists()
    assert not [p for p in os.listdir(tmp_path / "dir") if p.startswith(".tmp")]


def test_empty_container(tmp_path: Path) -> None:
    m = write_bundle(Draft("empty", "1"), tmp_path / "e.mvpk")
    b = Bundle.open(tmp_path / "e.mvpk")
    b.verify()
    assert m.blobs == ()
    assert os.path.getsize(tmp_path / "e.mvpk") == 4096
    with open(tmp_path / "e.mvpk", "rb") as f:
        assert list(stream_blobs(f)) == []


def test_identical_blobs_are_stored_once(tmp_path: Path) -> None:
    d = Draft("p", "1")
    d.add_blob("a", "x/y", BytesSource(b"same" * 2000))
    d.add_blob("b", "x/y", BytesSource(b"other"))
    d.add_blob("c", "x/y", BytesSource(b"same" * 2000))
    d.payload = {"parts": [{"blob": 0}, {"blob": 1}, {"blob": 2}]}
    m = write_bundle(d, tmp_path / "d.mvpk")
    assert len(m.blobs) == 2
    assert m.payload == {"parts": [{"blob": 0}, {"blob": 1}, {"blob": 0}]}
    b = Bundle.open(tmp_path / "d.mvpk")
    b.verify()
    assert b.read_blob(0) == b"same" * 2000
    assert os.path.getsize(tmp_path / "d.mvpk") < 4096 * 4
    assert listing(tmp_path) == ["d.mvpk"]


def _pipe_reader(data: bytes) -> tuple[object, threading.Thread]:
    r, w = os.pipe()

    def feed() -> None:
        with os.fdopen(w, "wb") as out:
            try:
                for i in range(0, len(data), 1000):  # small writes: the reader sees short reads
                    out.write(data[i : i + 1000])
                    out.flush()
            except BrokenPipeError:
                pass

    t = threading.Thread(target=feed)
    t.start()
    return os.fdopen(r, "rb", buffering=0), t


def test_stream_blobs_from_a_pipe(tmp_path: Path) -> None:
    path = tmp_path / "m.mvpk"
    m = write_bundle(small_draft(), path)
    f, t = _pipe_reader(path.read_bytes())
    got = {}
    with f:  # type: ignore[attr-defined]
        assert not f.seekable()  # type: ignore[attr-defined]
        for manifest, i, chunks in stream_blobs(f):  # type: ignore[arg-type]
            assert manifest == m
            got[i] = b"".join(chunks)
    t.join()
    assert got == {i: Bundle.open(path).read_blob(i) for i in range(len(m.blobs))}


def test_stream_blobs_skipping_a_blob_keeps_the_stream_in_step(tmp_path: Path) -> None:
    path = tmp_path / "m.mvpk"
    write_bundle(small_draft(), path)
    with open(path, "rb") as f:
        seen = [i for _m, i, _chunks in stream_blobs(f)]  # never reads a chunk
    assert seen == [0, 1, 2]


def test_stream_blobs_detects_a_damaged_blob(tmp_path: Path) -> None:
    path = tmp_path / "m.mvpk"
    write_bundle(small_draft(), path)
    b = Bundle.open(path)
    data = bytearray(path.read_bytes())
    data[b.extents[1][0] + 5] ^= 1
    f, t = _pipe_reader(bytes(data))

    def drain() -> None:
        for _m, _i, chunks in stream_blobs(f):  # type: ignore[arg-type]
            for _ in chunks:
                pass

    with f, pytest.raises(IntegrityError, match="blob 1"):  # type: ignore[attr-defined]
        drain()
    t.join()


def test_verify_names_each_damaged_blob(tmp_path: Path) -> None:
    d = Draft("p", "1")
    for i in range(3):
        d.add_blob(f"part{i}", "x/y", BytesSource(bytes([i]) * (5000 + i)))
    path = tmp_path / "m.mvpk"
    write_bundle(d, path)
    clean = path.read_bytes()
    extents = Bundle.open(path).extents
    for i, (off, size) in enumerate(extents):
        for where in (off, off + size // 2, off + size - 1):
            data = bytearray(clean)
            data[where] ^= 0x40
            path.write_bytes(data)
            b = Bundle.open(path)  # blobs are not read on open
            with pytest.raises(IntegrityError, match=rf"blob {i} \(part{i}\)") as info:
                b.verify()
            assert info.value.expected == b.manifest.blobs[i].digest
            assert info.value.actual != info.value.expected
            with pytest.raises(IntegrityError, match="is damaged"):
                b.read_blob(i)


class _Failing(BlobSource):
    def __init__(self, size: int, fail_after: int | None, actual: int | None = None) -> None:
        self.size = size
        self.fail_after = fail_after
        self.actual = size if actual is None else actual

    def chunks(self) -> Iterator[memoryview]:
        sent = 0
        while sent < self.actual:
            if self.fail_after is not None and sent >= self.fail_after:
                raise OSError("disk went away")
            n = min(1 << 16, self.actual - sent)
            sent += n
            yield memoryview(bytes(n))


@pytest.mark.parametrize(
    ("source", "error", "match"),
    [
        (_Failing(1 << 20, fail_after=1 << 18), OSError, "disk went away"),
        (_Failing(1 << 20, None, actual=(1 << 20) - 7), PayloadMismatchError, "announced"),
        (_Failing(1 << 20, None, actual=(1 << 20) + 7), PayloadMismatchError, "announced"),
    ],
    ids=["raises-mid-stream", "size-lies-short", "size-lies-long"],
)
@pytest.mark.parametrize("writer", ["bundle", "directory"])
def test_failed_write_leaves_nothing(
    tmp_path: Path, source: BlobSource, error: type[Exception], match: str, writer: str
) -> None:
    d = Draft("p", "1")
    d.add_blob("good", "x/y", BytesSource(b"fine"))
    d.add_blob("bad", "x/y", source)
    dest = tmp_path / "new" / "deeper" / "out"
    write = write_bundle if writer == "bundle" else write_directory
    with pytest.raises(error, match=match):
        write(d, dest)
    assert listing(tmp_path) == []


def test_invalid_manifest_is_refused_before_writing(tmp_path: Path) -> None:
    d = small_draft()
    d.plugin = "Not A Name"
    with pytest.raises(ManifestError, match="plugin name"):
        write_bundle(d, tmp_path / "sub" / "x.mvpk")
    with pytest.raises(ManifestError, match="plugin name"):
        write_directory(d, tmp_path / "dir")
    assert listing(tmp_path) == []


def test_existing_bundle_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "m.mvpk"
    write_bundle(Draft("empty", "1"), path)
    before = path.read_bytes()
    d = Draft("p", "1")
    d.add_blob("bad", "x/y", _Failing(100, fail_after=0))
    with pytest.raises(OSError, match="disk went away"):
        write_bundle(d, path)
    assert path.read_bytes() == before
    assert listing(tmp_path) == ["m.mvpk"]
    write_bundle(small_draft(), path)
    Bundle.open(path).verify()


def test_file_source_ranges_and_shrinking(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(bytes(range(256)) * 100)
    s = FileSource(p, 10, 1000)
    assert b"".join(bytes(c) for c in s.chunks()) == (bytes(range(256)) * 100)[10:1010]
    assert s.local_file() == (p, 10)
    short = FileSource(p, 0, 30000)
    with pytest.raises(PayloadMismatchError, match="shrank"):
        list(short.chunks())


def test_preamble_fields(tmp_path: Path) -> None:
    path = tmp_path / "m.mvpk"
    m = write_bundle(small_draft(), path)
    data = path.read_bytes()
    fields = struct.unpack("<8sHHIQQQQI8sI", data[:PREAMBLE_SIZE])
    magic, major, minor, flags, m_len, i_len, data_offset, file_len, _crc, reserved, _ = fields
    # minor 2, flag 0x2: the manifest is deflated
    assert (magic, major, minor, flags, reserved) == (b"\x89MVPK\r\n\x1a", 1, 2, 2, bytes(8))
    assert data[64 : 64 + m_len] == m.encode()
    assert data_offset == Bundle.open(path).extents[0][0] == 4096
    assert file_len == len(data)
    assert data[64 + m_len + i_len : data_offset] == bytes(data_offset - 64 - m_len - i_len)


def test_written_files_get_the_usual_mode(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        write_bundle(small_draft(), tmp_path / "m.mvpk")
        write_directory(small_draft(), tmp_path / "dir")
    finally:
        os.umask(umask)
    assert (tmp_path / "m.mvpk").stat().st_mode & 0o777 == 0o644
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "dir").iterdir()} == {0o644}


def test_directory_source_missing_blob(tmp_path: Path) -> None:
    src = write_directory(small_draft(), tmp_path / "dir")
    victim = src.locate(1).path
    victim.unlink()
    with pytest.raises(BlobNotFoundError, match="not found in"):
        read_blob(DirectorySource.open(tmp_path / "dir"), 1)
    with pytest.raises(FileNotFoundError):
        DirectorySource.open(tmp_path / "nowhere")


def test_read_verified_into_a_buffer(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 5)
    p = tmp_path / "blob"
    p.write_bytes(data)
    buf = bytearray(len(data) + 10)
    with open(p, "rb", buffering=0) as f:
        read_verified_into(f, len(data), digest_bytes(data), into=memoryview(buf))
    assert bytes(buf[: len(data)]) == data
    with open(p, "rb", buffering=0) as f, pytest.raises(IntegrityError, match="damaged"):
        read_verified_into(f, len(data), digest_bytes(b"other"), into=memoryview(buf))
    with open(p, "rb", buffering=0) as f, pytest.raises(IntegrityError, match="truncated"):
        read_verified_into(f, len(data) + 1, digest_bytes(data), into=memoryview(buf))
    with open(p, "rb", buffering=0) as f, pytest.raises(InvalidArgumentError, match="writable"):
        read_verified_into(f, len(data), digest_bytes(data), into=memoryview(bytes(10)))


def test_destination_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(OSError, match="Not a directory"):
        write_bundle(small_draft(), tmp_path / "file" / "x.mvpk")
    with pytest.raises(OSError):
        write_directory(small_draft(), tmp_path / "file" / "dir")
    assert listing(tmp_path) == ["file"]


def test_a_bundle_of_thousands_of_blobs(tmp_path: Path) -> None:
    """A model whose every tensor is a blob: layout, index, streaming and verification."""
    d = Draft("p", "1")
    blobs = [i.to_bytes(4, "little") * (1 + i % 7) for i in range(3000)]
    for data in blobs:
        d.add_blob("tensors", "application/octet-stream", BytesSource(data))
    path = tmp_path / "many.mvpk"
    m = write_bundle(d, path)
    b = Bundle.open(path)
    b.verify()
    assert len(b.extents) == len(m.blobs) == 3000
    assert [b.read_blob(i) for i in (0, 1234, 2999)] == [blobs[0], blobs[1234], blobs[2999]]
    with open(path, "rb") as f:
        streamed = {i: b"".join(chunks) for _m, i, chunks in stream_blobs(f)}
    assert streamed == dict(enumerate(blobs))
