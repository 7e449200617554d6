"""Tampered and damaged bytes on every read path: the cache never grants trust.

Each case damages bytes the way a disk, a careless script or an attacker would
(same size, so only the hash can tell), then loads through the public API and
checks that the bad bytes never come back: a damaged store blob is refused
with its digest and where it was read; a damaged cache entry is dropped and
fetched again from the store, and the next load is served from the good copy.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from modelvault import Vault  # noqa: E402
from modelvault.errors import IntegrityError, ModelVaultError  # noqa: E402
from modelvault.loader import StoreSource  # noqa: E402
from modelvault.storage import BlobCache  # noqa: E402
from modelvault.storage.local import LocalStore  # noqa: E402
from modelvault.storage.memory import MemoryStore  # noqa: E402

REMOTE = ["memory", pytest.param("s3", marks=pytest.mark.s3)]


def _state_dict() -> dict[str, Any]:
    g = torch.Generator().manual_seed(7)
    return {
        "w": torch.randn(64, 64, generator=g),
        "b": torch.randn(64, generator=g),
        "steps": torch.arange(10, dtype=torch.int64),
    }


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a
    )


def _flip_in_place(path: Path, at: int = 100) -> None:
    """Change 4 bytes of a file without changing its size or inode."""
    os.chmod(path, 0o644)
    with path.open("r+b") as f:
        f.seek(at)
        old = f.read(4)
        f.seek(at)
        f.write(bytes(x ^ 0xFF for x in old))


def _weights_digest(vault: Vault, spec: str) -> str:
    info = vault.resolve(spec)
    (variant,) = info.variants
    return next(b.digest for b in variant.blobs if b.role == "tensors")


@pytest.fixture
def remote_vault(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Vault]]:
    """Vaults on one remote store (memory or SeaweedFS) with a cache in tmp_path."""
    if request.param == "memory":
        store: Any = MemoryStore()
    else:
        store = request.getfixturevalue("make_s3_store")()
    cache = BlobCache(tmp_path / "cache", 1 << 30)
    registry = f"sqlite:///{tmp_path / 'registry.db'}"
    made: list[Vault] = []

    def make() -> Vault:
        v = Vault(registry=registry, store=store, cache=cache)
        made.append(v)
        return v

    yield make
    for v in made:
        if v._registry is not None:
            v._registry.close()


@pytest.mark.parametrize("remote_vault", REMOTE, indirect=True)
def test_tampered_cache_entry_is_never_handed_out(
    remote_vault: Callable[[], Vault], caplog: pytest.LogCaptureFixture
) -> None:
    vault = remote_vault()
    sd = _state_dict()
    vault.push(sd, "m:1.0.0")
    assert _same(vault.load("m:1.0.0"), sd)  # fills the cache
    digest = _weights_digest(vault, "m:1.0.0")
    cached = vault.cache.path_for(digest)
    assert cached.is_file()
    _flip_in_place(cached)
    with caplog.at_level(logging.WARNING, logger="modelvault"):
        again = Vault(registry=vault.registry, store=vault.store, cache=vault.cache).load("m:1.0.0")
    assert _same(again, sd)  # the good bytes, fetched again from the store
    assert any(digest in r.getMessage() and str(cached) in r.getMessage() for r in caplog.records)
    from modelvault.digest import digest_file

    assert digest_file(cached) == digest  # the entry was replaced by a verified copy


@pytest.mark.parametrize("remote_vault", REMOTE, indirect=True)
def test_cache_file_swapped_for_another_blob(remote_vault: Callable[[], Vault]) -> None:
    vault = remote_vault()
    a, b = _state_dict(), {k: v + 1 for k, v in _state_dict().items()}
    vault.push(a, "a:1.0.0")
    vault.push(b, "b:1.0.0")
    vault.load("a:1.0.0")
    vault.load("b:1.0.0")
    da, db = _weights_digest(vault, "a:1.0.0"), _weights_digest(vault, "b:1.0.0")
    pa, pb = vault.cache.path_for(da), vault.cache.path_for(db)
    assert pa.stat().st_size == pb.stat().st_size
    os.chmod(pa, 0o644)
    shutil.copyfile(pb, pa)  # a's entry now holds b's (valid, but other) bytes
    assert _same(vault.load("a:1.0.0"), a)


@pytest.mark.parametrize("remote_vault", REMOTE, indirect=True)
def test_cache_entry_truncated_while_a_load_reads_it(remote_vault: Callable[[], Vault]) -> None:
    vault = remote_vault()
    sd = _state_dict()
    vault.push(sd, "m:1.0.0")
    vault.load("m:1.0.0")
    digest = _weights_digest(vault, "m:1.0.0")
    from modelvault.formats.registry import get_plugin

    pipeline = vault.pipeline
    info = vault.resolve("m:1.0.0")
    truncated: list[Path] = []

    def use(source: StoreSource) -> Any:
        # The blob has been located (found in the cache, size checked); it
        # shrinks before the reader gets to it, as if another process cut it.
        i = next(k for k, ref in enumerate(source.manifest.blobs) if ref.digest == digest)
        loc = source.locate(i)
        if not truncated:
            os.chmod(loc.path, 0o644)
            os.truncate(loc.path, loc.size // 2)
            truncated.append(loc.path)
        return get_plugin(source.manifest.plugin).load(source, device="cpu")

    out = pipeline.deserialize(info.variants[0], use)
    assert truncated and _same(out, sd)
    size = next(b.size for b in info.variants[0].blobs if b.digest == digest)
    assert vault.cache.path_for(digest).stat().st_size == size  # fetched again, whole


@pytest.mark.parametrize("remote_vault", REMOTE, indirect=True)
def test_damaged_store_blob_behind_a_cache_is_refused(remote_vault: Callable[[], Vault]) -> None:
    vault = remote_vault()
    sd = _state_dict()
    vault.push(sd, "m:1.0.0")
    vault.load("m:1.0.0")
    digest = _weights_digest(vault, "m:1.0.0")
    _flip_in_place(vault.cache.path_for(digest))
    # The store's copy is damaged too: replace it with other bytes of the same size.
    store = vault.store
    good = store.read_range(digest, 0, store.stat(digest).size)  # type: ignore[union-attr]
    bad = bytes([good[0] ^ 1]) + good[1:]
    store.delete(digest)
    if isinstance(store, MemoryStore):
        import datetime as dt

        store._blobs[digest] = (bad, dt.datetime.now(dt.timezone.utc))
    else:  # what a bucket writer can do: put other bytes under the blob's key
        store.client.put_object(Bucket=store.bucket, Key=store.key(digest), Body=bad)
    with pytest.raises(IntegrityError) as err:
        vault.load("m:1.0.0")
    assert digest in str(err.value)
    assert not vault.cache.contains(digest)  # the damaged download never became visible


def test_tampered_local_store_blob_is_refused(tmp_path: Path) -> None:
    vault = Vault(registry=f"sqlite:///{tmp_path / 'r.db'}", store=LocalStore(tmp_path / "store"))
    sd = _state_dict()
    vault.push(sd, "m:1.0.0")
    assert _same(vault.load("m:1.0.0"), sd)
    digest = _weights_digest(vault, "m:1.0.0")
    path = vault.store.local_path(digest)
    assert path is not None
    _flip_in_place(path)
    for mmap in (True, False):
        with pytest.raises(IntegrityError) as err:
            vault.load("m:1.0.0", mmap=mmap)
        assert digest in str(err.value)
        assert str(path) in str(err.value)
    with pytest.raises(IntegrityError):
        vault.pull("m:1.0.0", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    vault.close()


def test_tampered_bundle_member_is_refused(tmp_path: Path) -> None:
    from modelvault.formats.bundle import Bundle

    vault = Vault(registry=f"sqlite:///{tmp_path / 'r.db'}", store=LocalStore(tmp_path / "store"))
    sd = _state_dict()
    vault.push(sd, "m:1.0.0")
    out = tmp_path / "m.mvpk"
    vault.export_bundle("m:1.0.0", out)
    bundle = Bundle.open(out)
    i = next(k for k, ref in enumerate(bundle.manifest.blobs) if ref.role == "tensors")
    loc = bundle.locate(i)
    _flip_in_place(
        out, at=loc.offset + 64
    )  # inside the weights: every CRC of the frame still holds
    other = Vault(registry=f"sqlite:///{tmp_path / 'r2.db'}", store=LocalStore(tmp_path / "s2"))
    with pytest.raises(IntegrityError) as err:
        other.import_bundle(out)
    assert bundle.manifest.blobs[i].digest in str(err.value)
    assert other.list() == []
    assert list(other.store.list()) == []
    from modelvault.formats.registry import get_plugin

    with pytest.raises(IntegrityError):
        get_plugin("tensors").load(Bundle.open(out), device="cpu")
    other.close()
    vault.close()


@pytest.mark.parametrize("remote_vault", REMOTE, indirect=True)
def test_unusable_cache_directory_is_a_clear_error(
    remote_vault: Callable[[], Vault], tmp_path: Path
) -> None:
    vault = remote_vault()
    vault.push(_state_dict(), "m:1.0.0")
    root = vault.cache.root
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    root.write_text("not a directory")  # root bypasses permission bits; this it cannot bypass
    with pytest.raises(ModelVaultError) as err:
        vault.load("m:1.0.0")
    assert str(root) in str(err.value)
