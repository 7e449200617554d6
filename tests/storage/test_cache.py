from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from modelvault.errors import BlobNotFoundError, IntegrityError, InvalidArgumentError
from modelvault.storage import BlobCache, CachedStore
from modelvault.storage.local import LocalStore
from modelvault.storage.memory import MemoryStore
from tests.storage.conformance import BlobStoreConformance, blob


class CountingStore(MemoryStore):
    """A real in-memory store that counts downloads (and can be slow, to widen races)."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.downloads = 0
        self.delay = delay
        self._count_lock = threading.Lock()

    def get_file(self, digest, dest, *, progress=None, verify=True):  # type: ignore[no-untyped-def]
        with self._count_lock:
            self.downloads += 1
        time.sleep(self.delay)
        super().get_file(digest, dest, progress=progress, verify=verify)


def age(cache: BlobCache, digest: str, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(cache.path_for(digest), (t, t))


def test_fetch_verifies_and_reuses(tmp_path: Path) -> None:
    remote = CountingStore()
    d, data = blob(5000)
    remote.put_bytes(d, data)
    cache = BlobCache(tmp_path / "c", 1 << 20)
    p = cache.fetch(remote, d, size=5000)
    assert p.read_bytes() == data
    assert p == tmp_path / "c" / "blobs" / "blake3" / d[7:9] / d[7:]
    assert not os.access(p, os.W_OK) or os.geteuid() == 0  # published read-only
    assert oct(p.stat().st_mode & 0o777) == "0o444"
    assert cache.fetch(remote, d) == p
    assert remote.downloads == 1
    assert [b.digest for b in cache.ls()] == [d]
    assert cache.size() == 5000


def test_fetch_missing_blob(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "c", 1 << 20)
    d, _ = blob(10)
    with pytest.raises(BlobNotFoundError, match=d):
        cache.fetch(MemoryStore(), d)
    assert cache.ls() == []


def test_corrupt_remote_is_refused_and_cache_untouched(tmp_path: Path) -> None:
    remote = LocalStore(tmp_path / "remote")
    d, data = blob(100_000)
    remote.put_bytes(d, data)
    path = remote.local_path(d)
    assert path is not None
    os.chmod(path, 0o644)
    path.write_bytes(data[:50_000] + bytes([data[50_000] ^ 1]) + data[50_001:])
    cache = BlobCache(tmp_path / "c", 1 << 20)
    with pytest.raises(IntegrityError) as err:
        cache.fetch(remote, d)
    assert d in str(err.value)
    assert str(path) in str(err.value)
    assert cache.ls() == []
    files = [p for p in (tmp_path / "c").rglob("*") if p.is_file() and p.suffix != ".lock"]
    assert files == []


def test_size_mismatch_with_manifest(tmp_path: Path) -> None:
    remote = MemoryStore()
    d, data = blob(100)
    remote.put_bytes(d, data)
    cache = BlobCache(tmp_path / "c", 1 << 20)
    with pytest.raises(IntegrityError, match="the manifest says 99"):
        cache.fetch(remote, d, size=99)
    assert cache.ls() == []


def test_lru_eviction(tmp_path: Path) -> None:
    remote = MemoryStore()
    blobs = [blob(1000, seed=i) for i in range(4)]
    for d, data in blobs:
        remote.put_bytes(d, data)
    cache = BlobCache(tmp_path / "c", 3000)
    for i, (d, _) in enumerate(blobs[:3]):
        cache.fetch(remote, d)
        age(cache, d, 100 - i)  # 0 oldest
    cache.fetch(remote, blobs[0][0])  # a hit makes 0 the most recent
    cache.fetch(remote, blobs[3][0])  # over the bound: 1 is now least recently used
    assert {b.digest for b in cache.ls()} == {blobs[0][0], blobs[2][0], blobs[3][0]}
    assert cache.size() == 3000


def test_blob_larger_than_bound_is_still_returned(tmp_path: Path) -> None:
    remote = MemoryStore()
    small, big = blob(100, seed=1), blob(5000, seed=2)
    for d, data in (small, big):
        remote.put_bytes(d, data)
    cache = BlobCache(tmp_path / "c", 1000)
    cache.fetch(remote, small[0])
    p = cache.fetch(remote, big[0])
    assert p.read_bytes() == big[1]
    assert [b.digest for b in cache.ls()] == [big[0]]


def test_locked_blob_is_never_evicted(tmp_path: Path) -> None:
    remote = MemoryStore()
    a, b = blob(1000, seed=1), blob(1000, seed=2)
    for d, data in (a, b):
        remote.put_bytes(d, data)
    cache = BlobCache(tmp_path / "c", 1 << 20)
    cache.fetch(remote, a[0])
    cache.fetch(remote, b[0])
    with cache._locked(a[0]):  # another fetch holds it (flock: per open file, so this is real)
        assert cache.evict(0) == 1000
        assert [x.digest for x in cache.ls()] == [a[0]]
    assert cache.clear() == 1000
    assert cache.ls() == []
    assert cache.size() == 0


def test_concurrent_fetches_download_once(tmp_path: Path) -> None:
    remote = CountingStore(delay=0.3)
    d, data = blob(200_000)
    remote.put_bytes(d, data)
    cache = BlobCache(tmp_path / "c", 1 << 20)
    paths: list[Path] = []
    barrier = threading.Barrier(6)

    def go() -> None:
        barrier.wait()
        paths.append(cache.fetch(remote, d))

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert remote.downloads == 1
    assert len(set(paths)) == 1
    assert paths[0].read_bytes() == data


def test_stale_temp_files_are_swept(tmp_path: Path) -> None:
    remote = MemoryStore()
    d, data = blob(10)
    remote.put_bytes(d, data)
    cache = BlobCache(tmp_path / "c", 1 << 20)
    p = cache.fetch(remote, d)
    stale = p.parent / ".leftover.part"
    stale.write_bytes(b"x")
    os.utime(stale, (0, 0))
    fresh = p.parent / ".inflight.part"
    fresh.write_bytes(b"x")
    assert [b.digest for b in cache.ls()] == [d]
    assert not stale.exists()
    assert fresh.exists()


@pytest.mark.parametrize("bound", [-1, 1.5, "10"])
def test_bad_bound(tmp_path: Path, bound: object) -> None:
    with pytest.raises(InvalidArgumentError, match="cache size bound"):
        BlobCache(tmp_path, bound)  # type: ignore[arg-type]


def test_hostile_digest(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "c", 1 << 20)
    with pytest.raises(ValueError, match="digest"):
        cache.fetch(MemoryStore(), "blake3:../../x")
    assert not (tmp_path / "c").exists() or list((tmp_path / "c").rglob("*")) == []


class TestCachedStore(BlobStoreConformance):
    """The cache wrapper is itself a conforming store."""

    @pytest.fixture
    def store(self, tmp_path_factory: pytest.TempPathFactory) -> CachedStore:
        return CachedStore(MemoryStore(), BlobCache(tmp_path_factory.mktemp("cache"), 1 << 30))


def test_cached_store_serves_reads_from_cache(tmp_path: Path) -> None:
    remote = CountingStore()
    store = CachedStore(remote, BlobCache(tmp_path / "c", 1 << 20))
    d, data = blob(3000)
    store.put_bytes(d, data)
    p = store.local_path(d)
    assert p is not None
    assert p.read_bytes() == data
    store.get_file(d, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data
    assert store.read_range(d, 10, 5) == data[10:15]
    assert remote.downloads == 1
    assert store.delete(d) is True
    assert not store.cache.contains(d)


def test_cached_store_over_local_reads_in_place(tmp_path: Path) -> None:
    remote = LocalStore(tmp_path / "r")
    store = CachedStore(remote, BlobCache(tmp_path / "c", 1 << 20))
    d, data = blob(100)
    store.put_bytes(d, data)
    assert store.local_path(d) == remote.local_path(d)
    assert store.cache.ls() == []


class InFlightStore(MemoryStore):
    """A real in-memory store whose downloads are slow and counted while in flight."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.in_flight = 0
        self.most = 0
        self._lock = threading.Lock()

    def get_file(self, digest, dest, *, progress=None, verify=True):  # type: ignore[no-untyped-def]
        with self._lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            time.sleep(self.delay)
            super().get_file(digest, dest, progress=progress, verify=verify)
        finally:
            with self._lock:
                self.in_flight -= 1


def test_holds_files_names_the_stores_read_in_place(tmp_path: Path) -> None:
    assert LocalStore(tmp_path / "local").holds_files
    assert not MemoryStore().holds_files
    cache = BlobCache(tmp_path / "cache", 1 << 20)
    assert CachedStore(LocalStore(tmp_path / "l2"), cache).holds_files
    assert not CachedStore(MemoryStore(), cache).holds_files


def test_a_cached_remote_variant_is_fetched_in_parallel(tmp_path: Path) -> None:
    # A CachedStore's local_path fetches the blob: the loader must not take it
    # for a local store and fetch a variant's blobs one after another.
    torch = pytest.importorskip("torch")
    from modelvault import Vault

    remote = InFlightStore(delay=0.0)
    registry = f"sqlite:///{tmp_path / 'registry.db'}"
    sd = {f"w{i}": torch.full((64,), float(i)) for i in range(6)}
    Vault(registry=registry, store=CachedStore(remote, BlobCache(tmp_path / "c1", 1 << 30))).push(
        sd, "m:1.0.0"
    )
    remote.delay = 0.2
    fresh = CachedStore(remote, BlobCache(tmp_path / "c2", 1 << 30))
    got = Vault(registry=registry, store=fresh).load("m:1.0.0")
    assert all(torch.equal(got[k], v) for k, v in sd.items())
    assert remote.most > 1
