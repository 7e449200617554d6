"""Two users, separate homes and caches, sharing one PostgreSQL database and one
SeaweedFS bucket: push, alias, pull and load each other's models; gc is safe."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelvault import config
from modelvault.registry import upgrade
from modelvault.vault import Vault
from tests.registry.conftest import create_database, drop_database
from tests.storage.seaweed import SeaweedS3

pytestmark = [pytest.mark.postgres, pytest.mark.s3]


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    server.start()
    try:
        server.create_bucket("team")
        url = create_database("postgresql")
        try:
            upgrade(url)
            yield {"server": server, "registry": url, "store": "s3://team/models"}
        finally:
            drop_database(url)
    finally:
        server.stop()


class Users:
    def __init__(self, team: dict[str, Any], tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.team, self.tmp, self.mp = team, tmp, monkeypatch

    def __call__(self, name: str) -> Vault:
        home = self.tmp / name
        env = {
            "MVAULT_HOME": str(home),
            "MVAULT_REGISTRY": self.team["registry"],
            "MVAULT_STORE": self.team["store"],
            "MVAULT_CACHE_DIR": str(home / "cache"),
            "MVAULT_USER": name,
            **self.team["server"].env(),
        }
        for k, v in env.items():
            self.mp.setenv(k, v)
        config.reload()
        return Vault()


@pytest.fixture
def as_user(team: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Users:
    return Users(team, tmp_path, monkeypatch)


def _cached(home: Path) -> list[Path]:
    return [p for p in (home / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_two_users_share_models(as_user: Users, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
    ).eval()
    x = torch.randn(3, 16)
    program = torch.export.export(model, (x,))

    alice = as_user("alice")
    pushed = alice.push(program, "shared/mlp", "1.0.0", aliases=["prod"])
    assert pushed.created
    assert pushed.bytes_uploaded > 0

    bob = as_user("bob")
    assert [m.name for m in bob.list()] == ["shared/mlp"]
    assert bob.resolve("shared/mlp@prod").version == "1.0.0"
    loaded = bob.load("shared/mlp@prod")
    assert torch.equal(loaded.module()(x), model(x))
    assert _cached(tmp_path / "bob"), "bob's blobs come through his own verified cache"
    out = bob.pull("shared/mlp@prod", tmp_path / "bob-out.pt2")
    assert torch.equal(torch.export.load(str(out)).module()(x), model(x))

    # Bob publishes 1.1.0 and moves prod; Alice sees it and loads it.
    model2 = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
    ).eval()
    bob.push(torch.export.export(model2, (x,)), "shared/mlp", "1.1.0")
    bob.set_alias("shared/mlp", "prod", "1.1.0")

    alice = as_user("alice")
    assert alice.resolve("shared/mlp@prod").version == "1.1.0"
    assert torch.equal(alice.load("shared/mlp@prod").module()(x), model2(x))
    events = alice.registry.events("shared/mlp")
    users = {e.user for e in events}
    assert {"alice", "bob"} <= users


def test_second_push_sends_nothing_and_warm_pull_reads_nothing(
    as_user: Users, tmp_path: Path
) -> None:
    src = tmp_path / "weights"
    src.mkdir()
    (src / "w.bin").write_bytes(bytes(range(256)) * 4096)
    alice = as_user("alice")
    first = alice.push(src, "shared/files", "1.0.0")
    assert first.bytes_uploaded == 1024 * 1024
    second = alice.push(src, "shared/files", "1.0.1")
    assert second.bytes_uploaded == 0
    assert second.blobs_skipped == 1

    bob = as_user("bob")
    bob.pull("shared/files@1.0.0", tmp_path / "b1")
    cached = {p: p.stat().st_mtime_ns for p in _cached(tmp_path / "bob")}
    assert cached
    bob.pull("shared/files@1.0.1", tmp_path / "b2")  # same blob: served from the cache
    assert (tmp_path / "b2" / "w.bin").read_bytes() == (src / "w.bin").read_bytes()


def test_gc_removes_only_old_unreferenced_blobs(as_user: Users, tmp_path: Path) -> None:
    alice = as_user("alice")
    keep, drop = tmp_path / "keep", tmp_path / "drop"
    keep.mkdir()
    drop.mkdir()
    (keep / "a.bin").write_bytes(b"keep me" * 1000)
    (drop / "b.bin").write_bytes(b"drop me" * 1000)
    alice.push(keep, "shared/gc", "1.0.0")
    alice.push(drop, "shared/gc", "2.0.0")
    bob = as_user("bob")
    bob.delete("shared/gc", "2.0.0")

    dry = bob.gc(grace_seconds=0, dry_run=True)
    assert len(dry["removed"]) == 2  # the file blob and the manifest of 2.0.0
    young = bob.gc()  # default grace: nothing that young is touched
    assert young["removed"] == []
    done = bob.gc(grace_seconds=0)
    assert sorted(done["removed"]) == sorted(dry["removed"])
    report = bob.verify()
    assert report["missing"] == []
    assert report["damaged"] == []
    assert (bob.pull("shared/gc@1.0.0", tmp_path / "k") / "a.bin").read_bytes() == b"keep me" * 1000


def test_gc_never_removes_a_blob_of_a_push_in_flight(as_user: Users, tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.mkdir()
    for i in range(8):
        (src / f"part{i}.bin").write_bytes(bytes([i]) * (4 * 1024 * 1024))
    alice = as_user("alice")
    bob_vault = as_user("bob")
    errors: list[BaseException] = []

    def push() -> None:
        try:
            alice.push(src, "shared/inflight", "1.0.0")
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=push)
    t.start()
    while t.is_alive():
        bob_vault.gc(grace_seconds=60)
    t.join()
    assert not errors
    report = bob_vault.verify("shared/inflight@1.0.0")
    assert report["missing"] == []
    assert report["checked"] == 9  # eight parts and the manifest
