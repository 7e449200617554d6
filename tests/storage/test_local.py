from __future__ import annotations

from pathlib import Path

import pytest

from modelvault.storage.local import LocalStore
from tests.storage.conformance import BlobStoreConformance


class TestLocalStore(BlobStoreConformance):
    @pytest.fixture
    def store(self, tmp_path_factory: pytest.TempPathFactory) -> LocalStore:
        return LocalStore(tmp_path_factory.mktemp("store"))


def _put_in_child(args: tuple[str, str, bytes]) -> bool:
    root, digest, data = args
    return LocalStore(root).put_bytes(digest, data)


def test_processes_writing_one_blob(tmp_path: Path) -> None:
    """Several processes publish the same blob: one wins, all succeed, no temp files remain."""
    import multiprocessing

    from tests.storage.conformance import blob

    d, data = blob(8 << 20)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_put_in_child, [(str(tmp_path / "s"), d, data)] * 8)
    assert results.count(True) == 1
    store = LocalStore(tmp_path / "s")
    assert store.read_range(d, 0, len(data)) == data
    assert list((tmp_path / "s" / "tmp").iterdir()) == []
    path = store.local_path(d)
    assert path is not None
    assert oct(path.stat().st_mode & 0o777) == "0o444"


def test_url_forms(tmp_path: Path) -> None:
    assert LocalStore.from_url(f"file://{tmp_path}").root == tmp_path
    assert LocalStore.from_url(f"file://localhost{tmp_path}").root == tmp_path
    assert LocalStore.from_url("file:///a%20b/c").root == Path("/a b/c")
    store = LocalStore(tmp_path)
    assert list(store.list()) == []  # nothing written yet: empty, not an error


def test_stray_files_are_not_listed(tmp_path: Path) -> None:
    from tests.storage.conformance import blob

    store = LocalStore(tmp_path)
    d, data = blob(10)
    store.put_bytes(d, data)
    sub = tmp_path / "blobs" / "blake3" / d[7:9]
    (sub / "notes.txt").write_text("x")
    (sub / ("f" * 64)).write_text("wrong directory for this name")
    (tmp_path / "blobs" / "blake3" / "README").write_text("x")
    assert [b.digest for b in store.list()] == [d]


def test_adopt_renames_a_staged_file_without_copying(tmp_path: Path) -> None:
    from tests.storage.conformance import blob

    store = LocalStore(tmp_path / "s")
    d, data = blob(3 << 20)
    staged = store.staging_dir() / "layer.part"
    staged.write_bytes(data)
    inode = staged.stat().st_ino
    assert store.adopt(d, staged, len(data)) is True
    path = store.local_path(d)
    assert path is not None
    assert path.stat().st_ino == inode  # the very file: no copy
    assert oct(path.stat().st_mode & 0o777) == "0o444"
    assert list(store.staging_dir().iterdir()) == []


def test_adopt_of_a_file_elsewhere_copies_and_verifies(tmp_path: Path) -> None:
    from modelvault.errors import IntegrityError
    from tests.storage.conformance import blob

    store = LocalStore(tmp_path / "s")
    d, data = blob(5000)
    outside = tmp_path / "outside.part"
    outside.write_bytes(data[:-1] + b"\0")  # right size, wrong bytes: caught by the hash
    with pytest.raises(IntegrityError, match=d):
        store.adopt(d, outside, len(data))
    assert not outside.exists() and not store.exists(d)
    outside.write_bytes(data)
    assert store.adopt(d, outside, len(data)) is True
    assert store.read_range(d, 0, len(data)) == data
    assert not outside.exists()


def test_listing_skips_a_blob_deleted_while_its_directory_is_read(tmp_path: Path) -> None:
    # Two collectors at once: one deletes a blob the other's listing has already
    # seen in its directory, before it stats it. The listing goes on without it.
    from modelvault.digest import digest_bytes

    store = LocalStore(tmp_path)
    by_prefix: dict[str, list[str]] = {}
    i = 0
    while not any(len(v) > 1 for v in by_prefix.values()):
        data = f"blob {i}".encode()
        d = digest_bytes(data)
        store.put_bytes(d, data)
        by_prefix.setdefault(d.split(":", 1)[1][:2], []).append(d)
        i += 1
    pair = next(v for v in by_prefix.values() if len(v) > 1)
    listing = store.list()
    seen = []
    for info in listing:
        seen.append(info.digest)
        if info.digest in pair:
            for other in pair:
                if other != info.digest:
                    store.delete(other)
    every = {d for v in by_prefix.values() for d in v}
    assert set(seen) <= every and len(seen) == len(every) - 1
