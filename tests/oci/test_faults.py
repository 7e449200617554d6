"""A registry that fails, lies or breaks connections: one clear error, nothing half-done."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelvault import Vault, errors
from modelvault.config import settings
from modelvault.oci.client import RegistryClient
from modelvault.oci.layout import ACCEPT

from .proxy import MisbehavingProxy, on, run_proxy
from .registry import RunningRegistry


@pytest.fixture
def proxy(registry: RunningRegistry) -> Iterator[MisbehavingProxy]:
    with run_proxy(registry.host) as p:
        yield p


def fast(host: str) -> RegistryClient:
    return RegistryClient(host, backoff=0.001)


HINTS = {"oci-mounts.json", "oci-sha256.json"}  # written by the push before, never by a pull


def _nothing_left(v: Vault) -> None:
    assert v.list() == []
    assert list(v.store.list()) == []
    cache = settings().cache_dir
    leftovers = [p for p in cache.rglob("*") if p.name not in HINTS] if cache.exists() else []
    assert leftovers == []
    staging = v.store.staging_dir()
    assert staging is None or list(staging.iterdir()) == []  # no half-written layer


@pytest.fixture
def pushed(registry: RunningRegistry, vault: Vault, model_dir: Path) -> str:
    vault.push(model_dir, "demo", "1.0.0")
    vault.push_oci("demo@1.0.0", registry.url("team/demo"))
    return "team/demo"


@pytest.mark.parametrize(
    ("status", "cls", "words"),
    [
        (401, errors.OCIAccessError, "401"),
        (403, errors.OCIAccessError, "403"),
        (404, errors.ArtifactNotFoundError, "404"),
        (429, errors.OCIUnavailableError, "429"),
        (500, errors.OCIUnavailableError, "500"),
    ],
)
def test_registry_status_is_one_clear_line(
    proxy: MisbehavingProxy, pushed: str, other_vault: Vault, status: int, cls: type, words: str
) -> None:
    proxy.add(
        on("GET", r"/manifests/"), "status", status=status, times=100, headers={"Retry-After": "0"}
    )
    with pytest.raises(cls) as info:
        other_vault.pull_oci(f"oci://{proxy.host}/{pushed}:1.0.0", client=fast(proxy.host))
    text = str(info.value)
    assert "\n" not in text and words in text and proxy.host in text
    _nothing_left(other_vault)


def test_transient_failures_are_retried(
    proxy: MisbehavingProxy, pushed: str, other_vault: Vault
) -> None:
    proxy.add(
        on("GET", r"/manifests/"), "status", status=429, times=1, headers={"Retry-After": "0"}
    )
    proxy.add(on("GET", r"/blobs/"), "status", status=503, times=2)
    got = other_vault.pull_oci(f"oci://{proxy.host}/{pushed}:1.0.0", client=fast(proxy.host))
    assert got.created


def test_manifest_whose_digest_does_not_match(
    registry: RunningRegistry, proxy: MisbehavingProxy, pushed: str, other_vault: Vault
) -> None:
    data, _ = RegistryClient(registry.host).get_manifest(
        pushed, "1.0.0", ["application/vnd.oci.image.manifest.v1+json"]
    )
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    forged = json.loads(data)
    forged["annotations"]["org.modelvault.version"] = "9.9.9"
    proxy.add(on("GET", r"/manifests/"), "body", body=json.dumps(forged).encode(), times=10)
    with pytest.raises(errors.IntegrityError, match=digest):
        other_vault.pull_oci(f"oci://{proxy.host}/{pushed}@{digest}", client=fast(proxy.host))
    _nothing_left(other_vault)


def test_manifest_digest_header_is_checked_on_tags(
    proxy: MisbehavingProxy, pushed: str, other_vault: Vault
) -> None:
    proxy.add(on("GET", r"/manifests/"), "flip_byte", times=10)
    with pytest.raises(errors.IntegrityError):
        other_vault.pull_oci(f"oci://{proxy.host}/{pushed}:1.0.0", client=fast(proxy.host))
    _nothing_left(other_vault)


def test_layer_whose_sha256_differs(
    proxy: MisbehavingProxy, pushed: str, other_vault: Vault, registry: RunningRegistry
) -> None:
    data, _ = RegistryClient(registry.host).get_manifest(
        pushed, "1.0.0", ["application/vnd.oci.image.manifest.v1+json"]
    )
    weights = next(x for x in json.loads(data)["layers"] if x["size"] > 10_000)
    proxy.add(on("GET", weights["digest"]), "flip_byte", times=10)
    with pytest.raises(errors.IntegrityError, match=weights["digest"]):
        other_vault.pull_oci(f"oci://{proxy.host}/{pushed}:1.0.0", client=fast(proxy.host))
    _nothing_left(other_vault)


def test_index_naming_a_missing_manifest(
    proxy: MisbehavingProxy, pushed: str, other_vault: Vault
) -> None:
    missing = "sha256:" + "ab" * 32
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "artifactType": "application/vnd.cncf.model.manifest.v1+json",
                "digest": missing,
                "size": 1234,
            }
        ],
    }
    proxy.add(on("GET", r"/manifests/1\.0\.0"), "body", body=json.dumps(index).encode(), times=10)
    with pytest.raises(errors.ArtifactNotFoundError, match=missing):
        other_vault.pull_oci(f"oci://{proxy.host}/{pushed}:1.0.0", client=fast(proxy.host))
    _nothing_left(other_vault)


def test_huge_manifest(proxy: MisbehavingProxy, pushed: str, other_vault: Vault) -> None:
    huge = json.dumps({"schemaVersion": 2, "pad": "x" * (5 * 1024 * 1024)}).encode()
    proxy.add(on("GET", r"/manifests/"), "body", body=huge, times=10)
    with pytest.raises(errors.ArtifactError, match="bytes"):
        other_vault.pull_oci(f"oci://{proxy.host}/{pushed}:1.0.0", client=fast(proxy.host))
    _nothing_left(other_vault)


def test_artifact_of_another_type(
    registry: RunningRegistry, other_vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import oras.client

    monkeypatch.chdir(tmp_path)
    Path("notes.txt").write_text("not a model\n")
    oras.client.OrasClient(insecure=True).push(
        target=f"{registry.host}/misc/notes:v1", files=["notes.txt"]
    )
    with pytest.raises(errors.ArtifactError, match="not a model"):
        other_vault.pull_oci(registry.url("misc/notes:v1"))
    _nothing_left(other_vault)


@pytest.mark.parametrize(
    "ref",
    [
        "oci://127.0.0.1:1/repo:bad tag",
        "oci://127.0.0.1:1/repo:-x",
        "oci://127.0.0.1:1/Repo:1",
        "oci://127.0.0.1:1/repo:" + "t" * 129,
        "oci://127.0.0.1:1",
    ],
)
def test_illegal_references(ref: str, vault: Vault, model_dir: Path) -> None:
    vault.push(model_dir, "demo", "1.0.0")
    with pytest.raises(errors.InvalidReferenceError) as info:
        vault.pull_oci(ref)
    assert "\n" not in str(info.value)
    with pytest.raises(errors.InvalidReferenceError):
        vault.push_oci("demo@1.0.0", ref)


# -- interrupted transfers -------------------------------------------------------------


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    import modelvault.oci.client as client_mod
    import modelvault.oci.transfer as transfer_mod

    monkeypatch.setattr(client_mod, "CHUNK", 256 * 1024)
    monkeypatch.setattr(transfer_mod, "CHUNK", 256 * 1024)
    return 256 * 1024


def _flip_byte(path: Path, offset: int) -> None:
    """Damage one byte for certain (writing a fixed byte over random data leaves it
    unchanged one time in 256)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0xFF]))


@pytest.fixture
def big_model(vault: Vault, tmp_path: Path) -> bytes:
    d = tmp_path / "big"
    d.mkdir()
    data = os.urandom(2 * 1024 * 1024 + 77)
    (d / "weights.bin").write_bytes(data)
    vault.push(d, "big", "1.0.0")
    return data


def _check_pulled(v: Vault, host: str, data: bytes, tmp_path: Path) -> None:
    out = v.pull("big@1.0.0", tmp_path / "pulled")
    assert (out / "weights.bin").read_bytes() == data


def test_upload_resumes_after_a_lost_chunk(
    proxy: MisbehavingProxy,
    vault: Vault,
    other_vault: Vault,
    big_model: bytes,
    small_chunks: int,
    registry: RunningRegistry,
    tmp_path: Path,
) -> None:
    # The third chunk never reaches the registry: the client asks where the
    # session stands and sends from there, not from the first byte.
    proxy.add(on("PATCH", r"/blobs/uploads/"), "drop_request", after=1000, times=1)
    proxy.rules[0].hits = 0
    counter = {"n": 0}
    orig = proxy.pick

    def pick(method: str, path: str, range_header: str = ""):  # type: ignore[no-untyped-def]
        if method == "PATCH":
            counter["n"] += 1
            if counter["n"] != 3:
                return None
        return orig(method, path, range_header)

    proxy.pick = pick  # type: ignore[method-assign]
    vault.push_oci("big@1.0.0", f"oci://{proxy.host}/big", client=fast(proxy.host))
    patched = sum(s.sent for s in proxy.log if s.method == "PATCH")
    assert patched == len(big_model)  # every byte sent once
    assert any(s.method == "GET" and "/blobs/uploads/" in s.path for s in proxy.log)
    other_vault.pull_oci(registry.url("big:1.0.0"))
    _check_pulled(other_vault, registry.host, big_model, tmp_path)


def test_upload_survives_a_chunk_cut_midway(
    proxy: MisbehavingProxy,
    vault: Vault,
    other_vault: Vault,
    big_model: bytes,
    small_chunks: int,
    registry: RunningRegistry,
    tmp_path: Path,
) -> None:
    proxy.add(on("PATCH", r"/blobs/uploads/"), "cut_request", after=100_000, times=1)
    vault.push_oci("big@1.0.0", f"oci://{proxy.host}/big", client=fast(proxy.host))
    other_vault.pull_oci(registry.url("big:1.0.0"))
    _check_pulled(other_vault, registry.host, big_model, tmp_path)


def test_download_resumes_with_ranged_gets(
    proxy: MisbehavingProxy,
    vault: Vault,
    other_vault: Vault,
    big_model: bytes,
    small_chunks: int,
    registry: RunningRegistry,
    tmp_path: Path,
) -> None:
    vault.push_oci("big@1.0.0", registry.url("big"))
    proxy.add(
        lambda m, p: m == "GET" and "/blobs/sha256:" in p, "cut_response", after=50_000, times=2
    )
    other_vault.pull_oci(f"oci://{proxy.host}/big:1.0.0", client=fast(proxy.host))
    _check_pulled(other_vault, registry.host, big_model, tmp_path)
    ranges = [s.range for s in proxy.log if s.method == "GET" and "/blobs/sha256:" in s.path]
    starts = {int(r.removeprefix("bytes=").split("-")[0]) for r in ranges if r}
    parts = set(range(0, len(big_model), small_chunks))
    assert parts <= starts  # every part asked for by range (in parallel)
    resumed = starts - parts
    assert resumed and all(
        s % small_chunks == 50_000 for s in resumed
    )  # from the byte after the cut


# -- the ranged pull path ---------------------------------------------------------------


def _blob_gets(proxy: MisbehavingProxy) -> list[str]:
    return [s.range for s in proxy.log if s.method == "GET" and "/blobs/sha256:" in s.path]


def _weights_digest(registry: RunningRegistry, repo: str, size: int) -> str:
    data, _ = RegistryClient(registry.host).get_manifest(
        repo, "1.0.0", ["application/vnd.oci.image.manifest.v1+json"]
    )
    return str(next(x for x in json.loads(data)["layers"] if x["size"] == size)["digest"])


def test_layer_whose_sha256_differs_in_a_later_part(
    proxy: MisbehavingProxy,
    vault: Vault,
    other_vault: Vault,
    big_model: bytes,
    small_chunks: int,
    registry: RunningRegistry,
) -> None:
    vault.push_oci("big@1.0.0", registry.url("big"))
    weights = _weights_digest(registry, "big", len(big_model))
    # The first part is true; one byte of a later part is not.
    proxy.add(on("GET", weights), "flip_byte", from_byte=2 * small_chunks, times=100)
    with pytest.raises(errors.IntegrityError, match=weights) as info:
        other_vault.pull_oci(f"oci://{proxy.host}/big:1.0.0", client=fast(proxy.host))
    assert "\n" not in str(info.value)
    assert any(r.startswith(f"bytes={2 * small_chunks}-") for r in _blob_gets(proxy))
    _nothing_left(other_vault)


def test_registry_that_ignores_range_sends_the_whole_blob(
    proxy: MisbehavingProxy,
    vault: Vault,
    other_vault: Vault,
    big_model: bytes,
    small_chunks: int,
    registry: RunningRegistry,
    tmp_path: Path,
) -> None:
    vault.push_oci("big@1.0.0", registry.url("big"))
    weights = _weights_digest(registry, "big", len(big_model))
    proxy.ignore_range = True
    other_vault.pull_oci(f"oci://{proxy.host}/big:1.0.0", client=fast(proxy.host))
    _check_pulled(other_vault, registry.host, big_model, tmp_path)
    asked = [s for s in proxy.log if s.method == "GET" and weights in s.path]
    assert len(asked) == 1 and asked[0].status == 200  # one 200, no further parts asked for
    assert list((tmp_path / "store-b" / "tmp").iterdir()) == []


def test_registry_that_ignores_range_and_breaks_the_stream(
    proxy: MisbehavingProxy,
    vault: Vault,
    other_vault: Vault,
    big_model: bytes,
    small_chunks: int,
    registry: RunningRegistry,
    tmp_path: Path,
) -> None:
    # The resumed request asks from the byte after the cut; the whole blob comes
    # again, and the bytes before that byte are read past, not written twice.
    vault.push_oci("big@1.0.0", registry.url("big"))
    weights = _weights_digest(registry, "big", len(big_model))
    proxy.ignore_range = True
    proxy.add(on("GET", weights), "cut_response", after=700_000, times=1)
    other_vault.pull_oci(f"oci://{proxy.host}/big:1.0.0", client=fast(proxy.host))
    _check_pulled(other_vault, registry.host, big_model, tmp_path)
    asked = [s.range for s in proxy.log if s.method == "GET" and weights in s.path]
    assert asked == [f"bytes=0-{small_chunks - 1}", f"bytes=700000-{len(big_model) - 1}"]


def test_connection_dropped_mid_range_is_resumed(
    proxy: MisbehavingProxy,
    vault: Vault,
    other_vault: Vault,
    big_model: bytes,
    small_chunks: int,
    registry: RunningRegistry,
    tmp_path: Path,
) -> None:
    vault.push_oci("big@1.0.0", registry.url("big"))
    weights = _weights_digest(registry, "big", len(big_model))
    proxy.add(on("GET", weights), "cut_response", after=10_000, from_byte=small_chunks, times=1)
    other_vault.pull_oci(f"oci://{proxy.host}/big:1.0.0", client=fast(proxy.host))
    _check_pulled(other_vault, registry.host, big_model, tmp_path)
    starts = {int(r.removeprefix("bytes=").split("-")[0]) for r in _blob_gets(proxy) if r}
    assert any(s % small_chunks == 10_000 for s in starts)  # resumed after the cut


def test_connection_dropped_mid_range_every_time(
    proxy: MisbehavingProxy,
    vault: Vault,
    other_vault: Vault,
    big_model: bytes,
    small_chunks: int,
    registry: RunningRegistry,
) -> None:
    vault.push_oci("big@1.0.0", registry.url("big"))
    weights = _weights_digest(registry, "big", len(big_model))
    proxy.add(on("GET", weights), "cut_response", after=1000, from_byte=small_chunks, times=1000)
    with pytest.raises(errors.OCIUnavailableError, match=weights) as info:
        other_vault.pull_oci(f"oci://{proxy.host}/big:1.0.0", client=fast(proxy.host))
    assert "\n" not in str(info.value)
    _nothing_left(other_vault)


def test_pull_interrupted_leaves_nothing(
    vault: Vault,
    other_vault: Vault,
    big_model: bytes,
    small_chunks: int,
    registry: RunningRegistry,
) -> None:
    vault.push_oci("big@1.0.0", registry.url("big"))

    class Interrupt:
        done = 0

        def start(self, total: int, label: str) -> None:
            pass

        def advance(self, n: int) -> None:
            self.done += n
            if self.done > 1_000_000:
                raise KeyboardInterrupt

        def finish(self) -> None:
            pass

    with pytest.raises(KeyboardInterrupt):
        other_vault.pull_oci(registry.url("big:1.0.0"), progress=Interrupt())
    _nothing_left(other_vault)


# -- the push path ------------------------------------------------------------------------


def test_push_of_a_damaged_store_copy_is_abandoned(
    vault: Vault, big_model: bytes, small_chunks: int, registry: RunningRegistry
) -> None:
    from modelvault.digest import digest_bytes

    path = vault.store.local_path(digest_bytes(big_model))
    assert path is not None
    path.chmod(0o644)
    _flip_byte(path, len(big_model) - 10)
    with pytest.raises(errors.IntegrityError) as info:
        vault.push_oci("big@1.0.0", registry.url("big"))
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(errors.ArtifactNotFoundError):
        RegistryClient(registry.host).get_manifest("big", "1.0.0", ACCEPT)
    import hashlib

    real = "sha256:" + hashlib.sha256(big_model).hexdigest()
    assert RegistryClient(registry.host).blob_size("big", real) is None  # never completed


def test_second_push_of_a_large_blob_asks_first(
    proxy: MisbehavingProxy, vault: Vault, big_model: bytes, small_chunks: int
) -> None:
    first = vault.push_oci("big@1.0.0", f"oci://{proxy.host}/big", client=fast(proxy.host))
    assert first.bytes_uploaded >= len(big_model)
    # Hashed while sent the first time; the sha256 is remembered, so the
    # second push asks (HEAD) before reading a byte of it.
    again = vault.push_oci("big@1.0.0", f"oci://{proxy.host}/big:again", client=fast(proxy.host))
    assert again.bytes_uploaded == 0 and again.blobs_uploaded == 0
    elsewhere = vault.push_oci("big@1.0.0", f"oci://{proxy.host}/copy", client=fast(proxy.host))
    assert elsewhere.blobs_mounted >= 1 and elsewhere.bytes_uploaded < len(big_model)


def test_large_blob_another_machine_pushed_is_not_sent_a_byte(
    proxy: MisbehavingProxy,
    vault: Vault,
    big_model: bytes,
    small_chunks: int,
    registry: RunningRegistry,
) -> None:
    # Another machine pushed the same bytes: no sha256 is remembered here, so
    # the blob is hashed first and the registry asked before any byte is sent.
    vault.push_oci("big@1.0.0", registry.url("big"))
    (settings().cache_dir / "oci-sha256.json").unlink()
    (settings().cache_dir / "oci-mounts.json").unlink()
    again = vault.push_oci("big@1.0.0", f"oci://{proxy.host}/big:again", client=fast(proxy.host))
    assert again.blobs_skipped >= 1 and again.bytes_uploaded == 0 and again.blobs_uploaded == 0
    assert not [s for s in proxy.log if s.method in ("PATCH", "POST") and "/blobs/" in s.path]
    assert any(s.method == "HEAD" and "/blobs/sha256:" in s.path for s in proxy.log)
    data, _ = RegistryClient(registry.host).get_manifest("big", "again", ACCEPT)
    assert json.loads(data)["layers"]


def _drop_blob(registry: RunningRegistry, repo: str, digest: str) -> None:
    RegistryClient(registry.host).request(
        "DELETE", f"/v2/{repo}/blobs/{digest}", scope=f"repository:{repo}:*", ok=(202,)
    ).read()


def test_remembered_large_blob_is_hashed_as_it_is_sent(
    proxy: MisbehavingProxy,
    vault: Vault,
    other_vault: Vault,
    big_model: bytes,
    small_chunks: int,
    registry: RunningRegistry,
    tmp_path: Path,
) -> None:
    # Its sha256 is remembered from the first push, but the registry lost it:
    # asked (HEAD: absent), then sent once more, hashed in the same read, and a
    # chunk cut midway is resumed without hashing any byte twice.
    vault.push_oci("big@1.0.0", registry.url("big"))
    weights = _weights_digest(registry, "big", len(big_model))
    _drop_blob(registry, "big", weights)
    proxy.add(on("PATCH", r"/blobs/uploads/"), "cut_request", after=100_000, times=1)
    again = vault.push_oci("big@1.0.0", f"oci://{proxy.host}/big:2", client=fast(proxy.host))
    assert again.blobs_uploaded >= 1 and again.bytes_uploaded >= len(big_model)
    assert any(s.method == "HEAD" and weights in s.path for s in proxy.log)
    other_vault.pull_oci(registry.url("big:2"))
    _check_pulled(other_vault, registry.host, big_model, tmp_path)


def test_remembered_large_blob_whose_store_copy_is_damaged(
    vault: Vault, big_model: bytes, small_chunks: int, registry: RunningRegistry
) -> None:
    from modelvault.digest import digest_bytes

    vault.push_oci("big@1.0.0", registry.url("big"))
    weights = _weights_digest(registry, "big", len(big_model))
    _drop_blob(registry, "big", weights)
    path = vault.store.local_path(digest_bytes(big_model))
    assert path is not None
    path.chmod(0o644)
    _flip_byte(path, 0)
    with pytest.raises(errors.IntegrityError) as info:
        vault.push_oci("big@1.0.0", registry.url("big:2"))
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert RegistryClient(registry.host).blob_size("big", weights) is None
    with pytest.raises(errors.ArtifactNotFoundError):
        RegistryClient(registry.host).get_manifest("big", "2", ACCEPT)
