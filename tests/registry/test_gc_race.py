"""gc against pushes in flight: the two bad interleavings, forced, and a randomized run.

Real parts throughout: the registry on SQLite, PostgreSQL and MariaDB, a
local store (and one run on SeaweedFS S3), pushes of real directories through
``Vault.push``. The interleavings are forced with events in subclasses of the
real Registry and LocalStore, never with sleeps.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelvault import maintenance
from modelvault.registry import Registry
from modelvault.storage.local import LocalStore
from modelvault.vault import Vault

LONG_AGO = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
WAIT = 60  # seconds any one event may take before the test fails instead of hanging


def write_model(root: Path, seed: str, files: int = 3, size: int = 20_000) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"part{i}.bin").write_bytes((f"{seed}:{i}:".encode()) * (size // 8))
    return root


def age_store(root: Path, seconds: float) -> None:
    """Make every blob in a local store look ``seconds`` old (an orphan from long ago)."""
    when = time.time() - seconds
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (when, when))


def assert_pullable(vault: Vault, spec: str, src: Path, out: Path) -> None:
    report = vault.verify(spec)
    assert report["missing"] == [], f"{spec}: blobs missing {report['missing']}"
    assert report["damaged"] == []
    got = vault.pull(spec, out)
    for f in src.iterdir():
        assert (got / f.name).read_bytes() == f.read_bytes()


class Gate:
    """Stop a thread at one point until the test lets it go."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.go = threading.Event()
        self.armed = True

    def stop_here(self) -> None:
        if self.armed:
            self.armed = False
            self.reached.set()
            assert self.go.wait(WAIT), "the test never released the gate"


class RegistryPausedAtRegister(Registry):
    """A push that has looked in the store and is about to register (the bad moment)."""

    gate: Gate

    def register_version(self, *args: Any, **kwargs: Any) -> Any:
        self.gate.stop_here()
        return super().register_version(*args, **kwargs)


class StorePausedAtDelete(LocalStore):
    """A gc that has decided and is about to delete its first blob."""

    gate: Gate

    def delete(self, digest: str) -> bool:
        self.gate.stop_here()
        return super().delete(digest)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the test, which fails with it
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def joined(t: threading.Thread, box: dict[str, Any]) -> Any:
    t.join(WAIT)
    assert not t.is_alive(), "thread did not finish"
    if "error" in box:
        raise box["error"]
    return box["result"]


@pytest.fixture
def orphaned(db_url: str, tmp_path: Path) -> tuple[Path, Path]:
    """m:1.0.0 pushed, deleted, and its blobs made two days old: orphans the default
    grace (a day) lets gc delete. Yields (model source, store root)."""
    src = write_model(tmp_path / "model", "orphan")
    root = tmp_path / "store"
    with Vault(Registry(db_url), LocalStore(root)) as v:
        first = v.push(src, "m", "1.0.0", format=FILES)
        assert first.blobs_uploaded == 3  # three files (the manifest is not counted)
        assert len(list(v.store.list())) == 4  # and the manifest
        v.delete("m", "1.0.0")
    age_store(root, 2 * 86400)
    return src, root


def test_gc_between_store_lookup_and_register_keeps_the_blobs(
    orphaned: tuple[Path, Path], db_url: str, tmp_path: Path
) -> None:
    """The re-push finds every old blob present and skips it; gc (default grace) runs
    right then. Without the lease gc deletes them and the version is registered broken."""
    src, root = orphaned
    paused = RegistryPausedAtRegister(db_url)
    paused.gate = Gate()
    with Vault(paused, LocalStore(root)) as pusher, Vault(db_url, LocalStore(root)) as collector:
        t, box = in_thread(lambda: pusher.push(src, "m", "1.0.1", format=FILES))
        assert paused.gate.reached.wait(WAIT)
        report = collector.gc()  # the default grace: the blobs are old enough
        assert report["removed"] == []
        assert report["kept_in_use"] == 4
        paused.gate.go.set()
        result = joined(t, box)
        assert result.created
        assert result.blobs_skipped == 3 and result.blobs_uploaded == 0
        assert_pullable(collector, "m@1.0.1", src, tmp_path / "out")
        # Registered now: the references keep them, and nothing is left leased.
        assert collector.gc(grace_seconds=0)["removed"] == []
        assert collector.registry.leased_digests() == set()


def test_push_that_meets_a_gc_deleting_its_blobs_uploads_them_again(
    orphaned: tuple[Path, Path], db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc has decided to delete the old blobs and is about to; the re-push starts then.
    It must not trust what it finds in the store: it waits for the gc, then uploads."""
    src, root = orphaned
    store = StorePausedAtDelete(root)
    store.gate = Gate()
    waiting = threading.Event()
    real_pause = maintenance._pause

    def pause(seconds: float) -> None:
        waiting.set()  # the push is waiting on the gc's decision
        real_pause(min(seconds, 0.05))

    monkeypatch.setattr(maintenance, "_pause", pause)
    with Vault(db_url, store) as collector, Vault(db_url, LocalStore(root)) as pusher:
        gc_thread, gc_box = in_thread(collector.gc)
        assert store.gate.reached.wait(WAIT)
        push_thread, push_box = in_thread(lambda: pusher.push(src, "m", "1.0.1", format=FILES))
        assert waiting.wait(WAIT)
        assert push_thread.is_alive()  # it has not looked in the store yet
        store.gate.go.set()
        report = joined(gc_thread, gc_box)
        assert len(report["removed"]) == 4
        result = joined(push_thread, push_box)
        assert result.created
        assert result.blobs_uploaded == 3 and result.blobs_skipped == 0
        assert_pullable(pusher, "m@1.0.1", src, tmp_path / "out")


def test_crashed_push_pins_its_blobs_until_the_lease_expires(
    orphaned: tuple[Path, Path], db_url: str
) -> None:
    _src, root = orphaned
    with Vault(db_url, LocalStore(root)) as v:
        digests = sorted(info.digest for info in v.store.list())
        lease = maintenance.PushLease(v.registry, v.store, ttl=3600)
        lease.protect(digests)
        assert all(lease.present(d) for d in digests)
        # The push dies here: no release. Its lease still holds every blob...
        assert v.gc(grace_seconds=0)["removed"] == []
        # ...until it expires (moved into the past on the database's own clock).
        from sqlalchemy import update

        from modelvault.registry.schema import BlobLease

        with v.registry.engine.begin() as conn:
            conn.execute(update(BlobLease).values(expires_at=LONG_AGO))
        assert sorted(v.gc(grace_seconds=0)["removed"]) == digests
        assert v.registry.leased_digests() == set()


# --- the randomized run ------------------------------------------------------------

CONTENTS = 10
# Named, not detected: detection may import torch, which under load takes longer than the run.
FILES = "files"


def random_run(
    make_vault: Callable[[], Vault],
    tmp_path: Path,
    *,
    seconds: float,
    pushers: int = 3,
    collectors: int = 2,
    seed: int | None = None,
) -> dict[str, int]:
    """Pushers push and delete versions of a few shared contents (so blobs are reused
    and orphaned all the time) while gc runs in loops with no grace at all; at the end
    every registered version must be whole. Returns counts of what happened."""
    seed = random.randrange(2**32) if seed is None else seed
    print(f"random gc/push run: seed {seed}")
    sources = []
    for c in range(CONTENTS):
        # Contents overlap: part0 is shared by every content of the same parity.
        d = write_model(tmp_path / f"content{c}", f"c{c}", files=2, size=4096)
        (d / "shared.bin").write_bytes(f"shared{c % 2}".encode() * 512)
        sources.append(d)
    stop = threading.Event()
    errors: list[BaseException] = []
    counts = {"pushed": 0, "deleted": 0, "gc_runs": 0, "gc_removed": 0, "uploaded": 0, "skipped": 0}
    lock = threading.Lock()
    registered: dict[str, int] = {}  # "name@version" -> content index

    def pusher(k: int) -> None:
        rng = random.Random(seed + k)
        v = make_vault()
        own: list[str] = []
        again: int | None = None
        i = 0
        try:
            while not stop.is_set():
                if own and rng.random() < 0.5:
                    ref = own.pop(rng.randrange(len(own)))
                    with lock:
                        again = registered.pop(ref)
                    v.delete("race", ref.split("@")[1])
                    with lock:
                        counts["deleted"] += 1
                    continue
                # Often the content just deleted: its blobs are fresh orphans gc is after.
                c = again if again is not None and rng.random() < 0.5 else rng.randrange(CONTENTS)
                again = None
                version = f"{k}.{i}.0"
                i += 1
                r = v.push(sources[c], "race", version, format=FILES)
                # Whole from the moment it is registered, not only at the end.
                report = v.verify(f"race@{version}")
                assert report["missing"] == [], f"race@{version} lost {report['missing']}"
                own.append(f"race@{version}")
                with lock:
                    registered[f"race@{version}"] = c
                    counts["pushed"] += 1
                    counts["uploaded"] += r.blobs_uploaded
                    counts["skipped"] += r.blobs_skipped
        except BaseException as exc:
            errors.append(exc)
            stop.set()
        finally:
            v.close()

    def collector(k: int) -> None:
        rng = random.Random(seed - k)
        v = make_vault()
        try:
            # Paced, not a tight loop: SQLite's busy handler would let back-to-back gc
            # runs starve the pushers of its one write lock.
            while not stop.wait(rng.uniform(0, 0.05)):
                report = v.gc(grace_seconds=0)
                with lock:
                    counts["gc_runs"] += 1
                    counts["gc_removed"] += len(report["removed"])
        except BaseException as exc:
            errors.append(exc)
            stop.set()
        finally:
            v.close()

    threads = [threading.Thread(target=pusher, args=(k,)) for k in range(pushers)]
    threads += [threading.Thread(target=collector, args=(k,)) for k in range(collectors)]
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]
    with make_vault() as v:
        listed = {f"race@{x.version}" for x in v.list("race", limit=1000)} if registered else set()
        assert listed == set(registered)
        for n, (ref, c) in enumerate(sorted(registered.items())):
            assert_pullable(v, ref, sources[c], tmp_path / f"out{n}")
        whole = v.verify()
        assert whole["missing"] == [] and whole["damaged"] == []
        assert v.registry.leased_digests() == set()
    return counts


@pytest.mark.slow
def test_random_gc_loops_against_pushers_local_store(db_url: str, tmp_path: Path) -> None:
    root = tmp_path / "store"
    counts = random_run(lambda: Vault(db_url, LocalStore(root)), tmp_path, seconds=20)
    print(counts)
    # The run exercised what it is about: reuse of stored blobs, and gc deleting orphans.
    assert counts["pushed"] >= 10
    assert counts["skipped"] > 0
    assert counts["gc_removed"] > 0


@pytest.fixture
def s3_store_factory(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[], Any]]:
    """A SeaweedFS S3 server and S3Stores on one fresh prefix of one bucket."""
    import uuid

    from modelvault import config
    from tests.storage.seaweed import SeaweedError, SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    try:
        server.start()
        server.create_bucket("mvault-race")
    except SeaweedError as exc:
        server.stop()
        pytest.fail(f"SeaweedFS is needed for the S3 run and could not start: {exc}")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    config.reload()
    prefix = f"race-{uuid.uuid4().hex[:8]}"

    def make() -> Any:
        from modelvault.storage.s3 import S3Store

        return S3Store("mvault-race", prefix, concurrency=2)

    try:
        yield make
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.parametrize("db_kind", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_random_gc_loops_against_pushers_s3_store(
    db_url: str, tmp_path: Path, s3_store_factory: Callable[[], Any]
) -> None:
    """The same run on S3, where object timestamps cannot protect a reused blob."""
    counts = random_run(
        lambda: Vault(db_url, s3_store_factory()), tmp_path, seconds=20, pushers=3, collectors=1
    )
    print(counts)
    assert counts["pushed"] >= 10
    assert counts["skipped"] > 0
    assert counts["gc_removed"] > 0
