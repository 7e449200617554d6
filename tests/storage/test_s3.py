from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from modelvault.storage.s3 import S3Store
from tests.storage.conformance import BlobStoreConformance

pytestmark = pytest.mark.s3


class TestS3Store(BlobStoreConformance):
    @pytest.fixture
    def store(self, make_s3_store: Callable[..., Any]) -> S3Store:
        store: S3Store = make_s3_store()
        return store


# ---- S3 specifics -----------------------------------------------------------

import io  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from datetime import timedelta  # noqa: E402
from pathlib import Path  # noqa: E402

from modelvault.errors import (  # noqa: E402
    BlobNotFoundError,
    IntegrityError,
    InvalidArgumentError,
    StoreAccessError,
    StoreNotFoundError,
    StoreUnavailableError,
)
from modelvault.storage import BlobCache, CallbackProgress  # noqa: E402
from tests.storage.conformance import blob  # noqa: E402
from tests.storage.conftest import BUCKET  # noqa: E402
from tests.storage.seaweed import SeaweedS3  # noqa: E402


def count_calls(store: S3Store) -> dict[str, int]:
    """Count S3 operations and request body bytes through botocore's event hooks."""
    counts: dict[str, int] = {"body_bytes": 0}

    def before_build(params: Any, model: Any, **_: Any) -> None:
        counts[model.name] = counts.get(model.name, 0) + 1

    def before_send(request: Any, **_: Any) -> None:
        body = request.body
        if isinstance(body, (bytes, bytearray)):
            counts["body_bytes"] += len(body)
        elif isinstance(body, io.BytesIO):
            counts["body_bytes"] += body.getbuffer().nbytes
        elif hasattr(body, "seek") and hasattr(body, "tell"):  # a part's file-like body
            pos = body.tell()
            counts["body_bytes"] += body.seek(0, io.SEEK_END) - pos
            body.seek(pos)

    store.client.meta.events.register("before-parameter-build.s3", before_build)
    store.client.meta.events.register("before-send.s3", before_send)
    return counts


@pytest.mark.parametrize(
    ("checksum", "size"), [("CRC32", 12 << 20), ("SHA256", 12 << 20), ("SHA256", 1000)]
)
def test_layout_and_checksum(
    make_s3_store: Callable[..., Any],
    seaweed: SeaweedS3,
    monkeypatch: pytest.MonkeyPatch,
    checksum: str,
    size: int,
) -> None:
    import modelvault.config

    monkeypatch.setenv("MVAULT_S3_CHECKSUM", checksum)
    modelvault.config.reload()
    store: S3Store = make_s3_store()
    assert store.checksum == checksum
    d, data = blob(size)
    store.put_bytes(d, data)
    algo, hexpart = d.split(":")
    key = f"{store.prefix}blobs/{algo}/{hexpart[:2]}/{hexpart}"
    assert store.key(d) == key
    head = seaweed.client().head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(data)
    assert head.get(f"Checksum{checksum}")  # the server checked and kept the checksums


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("MVAULT_S3_CHECKSUM", "MD5", "not an S3 checksum"),
        ("MVAULT_S3_PART_SIZE", "1MiB", "outside what S3 accepts"),
        ("MVAULT_S3_PART_SIZE", "lots", "not a size"),
        ("MVAULT_S3_CONCURRENCY", "0", "between 1 and 256"),
        ("MVAULT_S3_CONCURRENCY", "eight", "not a whole number"),
    ],
)
def test_bad_settings(monkeypatch: pytest.MonkeyPatch, name: str, value: str, match: str) -> None:
    import modelvault.config
    from modelvault.errors import ConfigError

    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=match):
        modelvault.config.reload()
    monkeypatch.delenv(name)


def test_settings_reach_the_store(s3_env: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> None:
    import modelvault.config

    monkeypatch.setenv("MVAULT_S3_PART_SIZE", "16MiB")
    monkeypatch.setenv("MVAULT_S3_CONCURRENCY", "3")
    modelvault.config.reload()
    store = S3Store(BUCKET, "settings")
    assert (store.part_size, store.concurrency, store.checksum) == (16 << 20, 3, "CRC32")
    store.close()


def test_server_rejects_a_bad_part_checksum(seaweed: SeaweedS3) -> None:
    import base64

    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match="BadDigest"):
        seaweed.client().put_object(
            Bucket=BUCKET,
            Key="bad-checksum",
            Body=b"hello",
            ChecksumSHA256=base64.b64encode(b"\0" * 32).decode(),
        )


def test_dedup_sends_zero_bytes(make_s3_store: Callable[..., Any], tmp_path: Path) -> None:
    store: S3Store = make_s3_store()
    d, data = blob(11 << 20)
    src = tmp_path / "m.bin"
    src.write_bytes(data)
    counts = count_calls(store)
    assert store.put_file(d, src) is True
    assert counts.get("UploadPart", 0) == 3
    assert len(data) <= counts["body_bytes"] < len(data) + 4096  # the parts, plus the small XML
    counts.clear()
    counts["body_bytes"] = 0
    assert store.put_file(d, src) is False
    assert counts == {"body_bytes": 0, "HeadObject": 1}


def test_list_ignores_foreign_objects(
    make_s3_store: Callable[..., Any], seaweed: SeaweedS3
) -> None:
    store: S3Store = make_s3_store()
    d, data = blob(10)
    store.put_bytes(d, data)
    client = seaweed.client()
    for key in [
        "blobs/blake3/zz/notablob",
        "blobs/blake3/00/" + "1" * 64,
        "blobs/readme.txt",
        "other",
    ]:
        client.put_object(Bucket=BUCKET, Key=store.prefix + key, Body=b"x")
    assert [b.digest for b in store.list()] == [d]


def test_cleanup_incomplete_uploads(make_s3_store: Callable[..., Any], seaweed: SeaweedS3) -> None:
    store: S3Store = make_s3_store()
    d, _ = blob(10)
    client = seaweed.client()
    client.create_multipart_upload(Bucket=BUCKET, Key=store.key(d))
    assert store.cleanup_incomplete_uploads(older_than=timedelta(days=1)) == 0
    assert store.cleanup_incomplete_uploads(older_than=timedelta(0)) == 1
    left = client.list_multipart_uploads(Bucket=BUCKET, Prefix=store.prefix).get("Uploads", [])
    assert left == []


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("s3://Bad_Bucket/x", "not a valid S3 bucket"),
        ("s3://ok-bucket/../etc", "prefix"),
        ("s3://ok-bucket/a//b", "prefix"),
        ("s3://ok-bucket/a b", "prefix"),
        ("http://ok-bucket", "not an s3"),
    ],
)
def test_bad_urls(url: str, match: str, s3_env: SeaweedS3) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        S3Store.from_url(url)


def test_url_and_endpoint_from_environment(s3_env: SeaweedS3) -> None:
    store = S3Store.from_url(f"s3://{BUCKET}/team/models/")
    try:
        assert store.url == f"s3://{BUCKET}/team/models"
        assert store.prefix == "team/models/"
        assert store.endpoint.rstrip("/") == s3_env.endpoint
        d, data = blob(100)
        assert store.put_bytes(d, data) is True
        assert store.read_range(d, 0, 100) == data
    finally:
        store.close()


def test_wrong_credentials(
    make_s3_store: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store: S3Store = make_s3_store()
    d, data = blob(100)
    t = time.monotonic()
    with pytest.raises(StoreAccessError, match="refused access") as err:
        store.put_bytes(d, data)
    assert time.monotonic() - t < 5
    assert any(code in str(err.value) for code in ("SignatureDoesNotMatch", "AccessDenied", "403"))
    assert "AWS_SECRET_ACCESS_KEY" in (err.value.hint or "")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    other: S3Store = make_s3_store()
    with pytest.raises(StoreAccessError, match="refused access"):
        other.exists(d)


def test_no_credentials(
    make_s3_store: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store: S3Store = make_s3_store()
    t = time.monotonic()
    with pytest.raises(StoreAccessError, match="no usable AWS credentials"):
        store.exists(blob(1)[0])
    assert time.monotonic() - t < 5


def test_missing_bucket(make_s3_store: Callable[..., Any], tmp_path: Path) -> None:
    store: S3Store = make_s3_store(bucket="no-such-bucket-here")
    d, data = blob(100)
    t = time.monotonic()
    for call in (
        lambda: store.exists(d),
        lambda: store.put_bytes(d, data),
        lambda: store.get_file(d, tmp_path / "x"),
        lambda: list(store.list()),
    ):
        with pytest.raises(StoreNotFoundError, match="bucket 'no-such-bucket-here' does not exist"):
            call()
    assert time.monotonic() - t < 5
    assert list(tmp_path.iterdir()) == []


def test_endpoint_refusing_connections(
    make_s3_store: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    store: S3Store = make_s3_store()
    t = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port} does not answer") as err:
        store.put_bytes(*blob(100))
    # Bounded retries with backoff: a few seconds, not a storm.
    assert time.monotonic() - t < 10
    assert "AWS_ENDPOINT_URL_S3" in (err.value.hint or "")


def test_endpoint_that_never_replies(
    make_s3_store: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections (the kernel does) and never answers
    port = silent.getsockname()[1]
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
        store: S3Store = make_s3_store(read_timeout=1.0, max_attempts=2)
        t = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="does not answer"):
            store.exists(blob(1)[0])
        assert time.monotonic() - t < 8
    finally:
        silent.close()


def test_overwritten_blob_is_refused_by_pull(
    make_s3_store: Callable[..., Any], seaweed: SeaweedS3, tmp_path: Path
) -> None:
    store: S3Store = make_s3_store()
    d, data = blob(12 << 20)
    store.put_bytes(d, data)
    evil = bytearray(data)
    evil[7 << 20] ^= 0xFF  # same length, one byte different
    seaweed.client().put_object(Bucket=BUCKET, Key=store.key(d), Body=bytes(evil))
    cache = BlobCache(tmp_path / "cache", 1 << 30)
    with pytest.raises(IntegrityError) as err:
        cache.fetch(store, d)
    msg = str(err.value)
    assert d in msg
    assert f"s3://{BUCKET}/{store.key(d)}" in msg
    assert err.value.expected == d
    assert err.value.actual != d
    assert cache.ls() == []
    assert cache.size() == 0
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.suffix != ".lock"]
    assert leftovers == []
    dest = tmp_path / "direct.bin"
    with pytest.raises(IntegrityError, match=d):
        store.get_file(d, dest)
    assert list(tmp_path.glob("*direct*")) == []
    # verify=False still checks the length, and hands back what is stored.
    store.get_file(d, dest, verify=False)
    assert dest.read_bytes() == bytes(evil)


def test_get_file_missing_blob_leaves_dest(
    make_s3_store: Callable[..., Any], tmp_path: Path
) -> None:
    store: S3Store = make_s3_store()
    dest = tmp_path / "keep"
    dest.write_bytes(b"old")
    with pytest.raises(BlobNotFoundError):
        store.get_file(blob(5)[0], dest)
    assert dest.read_bytes() == b"old"


def test_warm_cache_pull_reads_nothing_from_s3(
    make_s3_store: Callable[..., Any], tmp_path: Path
) -> None:
    store: S3Store = make_s3_store()
    d, data = blob(6 << 20)
    store.put_bytes(d, data)
    cache = BlobCache(tmp_path / "cache", 1 << 30)
    counts = count_calls(store)
    path = cache.fetch(store, d)
    assert counts.get("GetObject", 0) == 2  # two ranged GETs of 5 MiB parts
    assert path.read_bytes() == data
    counts.clear()
    assert cache.fetch(store, d) == path
    assert counts == {}


def _fetch_in_child(args: tuple[str, str, str, str]) -> bool:
    """Runs in a separate process: fetch one blob, report whether this process downloaded it."""
    bucket, prefix, cache_root, digest = args
    started: list[int] = []
    store = S3Store(bucket, prefix, part_size=5 << 20, concurrency=2)
    try:
        BlobCache(Path(cache_root), 1 << 30).fetch(
            store,
            digest,
            progress=CallbackProgress(lambda done, total, label: started.append(done)),
        )
    finally:
        store.close()
    return bool(started)


def test_concurrent_processes_download_once(
    make_s3_store: Callable[..., Any], tmp_path: Path
) -> None:
    import multiprocessing

    store: S3Store = make_s3_store()
    d, data = blob(20 << 20)
    store.put_bytes(d, data)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        downloaded = pool.map(
            _fetch_in_child, [(BUCKET, store.prefix, str(tmp_path / "cache"), d)] * 4
        )
    assert sorted(downloaded) == [False, False, False, True]
    assert BlobCache(tmp_path / "cache", 1 << 30).path_for(d).read_bytes() == data


def test_server_lost_mid_upload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its own server: killed while a multipart upload is in flight, then started again."""
    import modelvault.config

    server = SeaweedS3(tmp_path / "weed")
    try:
        server.start()
    except Exception as exc:
        pytest.fail(f"SeaweedFS could not start: {exc}")
    try:
        server.create_bucket("crash")
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        modelvault.config.reload()
        store = S3Store("crash", "m", part_size=5 << 20, concurrency=2)
        d, data = blob(40 << 20)
        src = tmp_path / "model.bin"
        src.write_bytes(data)
        killed = threading.Event()

        def on_progress(done: int, total: int, label: str) -> None:
            if done > 0 and not killed.is_set():
                killed.set()
                server.kill()  # after the first part is in: the rest will hit a dead server

        t = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="does not answer") as err:
            store.put_file(d, src, progress=CallbackProgress(on_progress))
        assert killed.is_set()
        assert time.monotonic() - t < 20
        assert server.endpoint.removeprefix("http://") in str(err.value)

        server.start()
        assert store.exists(d) is False  # no half-written object became visible
        assert list(store.list()) == []
        listed = server.client().list_objects_v2(Bucket="crash").get("Contents", [])
        assert listed == []
        assert store.cleanup_incomplete_uploads(older_than=timedelta(0)) >= 0
        assert store.put_file(d, src) is True  # the same push succeeds once the server is back
        out = tmp_path / "back.bin"
        store.get_file(d, out)
        assert out.read_bytes() == data
        store.close()
    finally:
        server.stop()
