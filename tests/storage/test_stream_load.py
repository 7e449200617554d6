"""Weights streamed from S3 into the loader's buffers: verified, cached in the same pass, or refused.

A GPU load from a remote store does not download every blob into the cache
and read it back: ranged GETs land in the loader's staging buffers, each blob
is hashed, and the cache entry written alongside is committed only when the
blob verified. The CPU tests drive the same reader through ``load_tensors``
with ``mmap=False`` (the path a streaming source takes on any device); the
``gpu`` ones go through ``Vault.load(device="cuda")``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from modelvault import Vault  # noqa: E402
from modelvault.errors import IntegrityError  # noqa: E402
from modelvault.formats._torch.stream import load_tensors  # noqa: E402
from modelvault.storage import BlobCache  # noqa: E402
from modelvault.storage.cache import wait_for_fills  # noqa: E402

pytestmark = pytest.mark.s3


def _weights() -> dict[str, Any]:
    g = torch.Generator().manual_seed(11)
    return {
        "big": torch.randn(5 * 1024 * 1024 + 5, generator=g),  # 20 MiB: two reads of the ring
        "w": torch.randn(700, 300, generator=g),
        "half": torch.randn(4096, 33, generator=g).to(torch.float16),
        "steps": torch.arange(10, dtype=torch.int64),
    }


@pytest.fixture
def vault(make_s3_store: Any, tmp_path: Path) -> Iterator[Vault]:
    store = make_s3_store()
    v = Vault(
        registry=f"sqlite:///{tmp_path / 'registry.db'}",
        store=store,
        cache=BlobCache(tmp_path / "cache", 1 << 30),
    )
    yield v
    if v._registry is not None:
        v._registry.close()


def _tensor_digests(vault: Vault, spec: str) -> list[str]:
    (variant,) = vault.resolve(spec).variants
    return [b.digest for b in variant.blobs if b.role == "tensors"] or [
        b.digest for b in variant.blobs
    ]


def _open(vault: Vault, spec: str, **how: Any) -> Any:
    info = vault.resolve(spec)
    (variant,) = info.variants
    return vault.pipeline.open(variant, info=info, stream=True, **how)


def _stray_files(cache: BlobCache) -> list[Path]:
    return [p for p in cache.root.rglob("*") if p.is_file() and p.name.endswith(".part")]


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k].cpu(), b[k].cpu()), k


def _tensor_blob_digests(source: Any) -> list[str]:
    return sorted({source.manifest.blobs[t.blob].digest for t in source.manifest.tensors})


def test_streamed_blobs_are_verified_and_cached_in_the_same_pass(vault: Vault) -> None:
    sd = _weights()
    vault.push(sd, "m:1.0.0")
    source = _open(vault, "m:1.0.0")
    digests = _tensor_blob_digests(source)
    assert len(digests) > 1
    assert not any(vault.cache.contains(d) for d in digests)  # not downloaded up front
    _same(load_tensors(source, torch.device("cpu"), mmap=False), sd)
    assert wait_for_fills(60)  # the entries are committed off the load's path
    assert all(vault.cache.contains(d) for d in digests)
    from modelvault.digest import digest_file

    assert all(digest_file(vault.cache.path_for(d)) == d for d in digests)
    assert not _stray_files(vault.cache)
    # The next open finds them cached and reads them from there.
    again = _open(vault, "m:1.0.0")
    assert all(again.remote(t.blob) is None for t in again.manifest.tensors)
    _same(load_tensors(again, torch.device("cpu"), mmap=False), sd)


def test_the_cache_can_be_skipped(vault: Vault) -> None:
    sd = _weights()
    vault.push(sd, "m:1.0.0")
    source = _open(vault, "m:1.0.0", fill_cache=False)
    _same(load_tensors(source, torch.device("cpu"), mmap=False), sd)
    assert wait_for_fills(60)
    assert not any(vault.cache.contains(d) for d in _tensor_blob_digests(source))
    assert not _stray_files(vault.cache)


def _damage_in_bucket(vault: Vault, digest: str, *, truncate: bool = False) -> None:
    store: Any = vault.store
    key = store.key(digest)
    body = store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read()
    bad = (
        body[: len(body) // 2]
        if truncate
        else body[:100] + bytes(b ^ 0x5A for b in body[100:104]) + body[104:]
    )
    store.client.put_object(Bucket=store.bucket, Key=key, Body=bad)


@pytest.mark.parametrize("truncate", [False, True], ids=["same-size", "truncated"])
def test_a_blob_damaged_in_the_bucket_is_refused_and_never_cached(
    vault: Vault, truncate: bool
) -> None:
    sd = _weights()
    vault.push(sd, "m:1.0.0")
    source = _open(vault, "m:1.0.0")
    digests = _tensor_blob_digests(source)
    bad = digests[0]
    _damage_in_bucket(vault, bad, truncate=truncate)
    with pytest.raises(IntegrityError, match="truncated" if truncate else "damaged") as info:
        load_tensors(source, torch.device("cpu"), mmap=False)
    assert bad in str(info.value) and "s3://" in str(info.value)
    assert not any(vault.cache.contains(d) for d in digests)  # not even the good ones of that load
    assert not _stray_files(vault.cache)


def test_cpu_loads_through_the_vault_do_not_stream(vault: Vault) -> None:
    sd = _weights()
    vault.push(sd, "m:1.0.0")
    _same(vault.load("m:1.0.0"), sd)  # CPU: through the cache, as before
    assert all(vault.cache.contains(d) for d in _tensor_digests(vault, "m:1.0.0"))


cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"
)


@pytest.mark.gpu
@cuda
def test_a_cuda_load_streams_from_s3_and_fills_the_cache(vault: Vault) -> None:
    sd = _weights()
    vault.push(sd, "m:1.0.0")
    out = vault.load("m:1.0.0", device="cuda")
    assert all(t.device.type == "cuda" for t in out.values())
    _same(out, sd)
    assert wait_for_fills(60)
    assert all(vault.cache.contains(d) for d in _tensor_digests(vault, "m:1.0.0"))
    assert not _stray_files(vault.cache)
    _same(vault.load("m:1.0.0", device="cuda"), sd)  # warm: from the cache


@pytest.mark.gpu
@cuda
def test_a_cuda_load_refuses_a_damaged_bucket_blob(vault: Vault) -> None:
    sd = _weights()
    vault.push(sd, "m:1.0.0")
    digests = _tensor_digests(vault, "m:1.0.0")
    _damage_in_bucket(vault, digests[0])
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    with pytest.raises(IntegrityError, match="damaged"):
        vault.load("m:1.0.0", device="cuda")
    assert torch.cuda.memory_allocated() == before
    assert not vault.cache.contains(digests[0])
    assert not _stray_files(vault.cache)
