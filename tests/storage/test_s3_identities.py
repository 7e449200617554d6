"""A team's bucket with two keys, against SeaweedFS's own identity config.

The serving nodes hold a read-only key (SeaweedFS actions ``Read``, ``List``:
GetObject, HeadObject, ListBucket), the publishers a read-write one (``Read``,
``Write``, ``List``, ``Tagging``). What SeaweedFS answers is the oracle: a
read-only key gets ``AccessDenied`` (403) for PutObject, CreateMultipartUpload
and DeleteObject, even of a key that does not exist, and everything else
works. modelvault turns that into one line naming the missing permission, and
a refused upload registers nothing.

The registry here is one SQLite file every user may write, so the store is the
only thing that refuses; the last test adds the database half of the split
(``mvault db grant-reader``), which is what refuses ``rm``: deleting a version
is a registry change, and its blobs only leave the store at ``gc``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from modelvault import Vault, config
from modelvault.errors import StoreAccessError
from modelvault.registry.schema import BlobDeletion, BlobLease, Event
from modelvault.registry.signatures import SIGNATURE_ROLE
from tests.cli import conftest as cli_fixtures
from tests.cli.conftest import Result
from tests.e2e import conftest as e2e_fixtures
from tests.signing import conftest as signing_fixtures
from tests.storage.seaweed import SeaweedError, SeaweedS3

mvault = cli_fixtures.mvault
model_dir = e2e_fixtures.model_dir
keys = signing_fixtures.keys

pytestmark = pytest.mark.s3

READER = ["Read", "List"]
PUBLISHER = ["Read", "Write", "List", "Tagging"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    s = SeaweedS3(
        tmp_path_factory.mktemp("seaweed-ids"),
        identities={"reader": READER, "publisher": PUBLISHER},
    )
    try:
        s.start()
        s.create_bucket("team")
    except SeaweedError as exc:
        s.stop()
        pytest.fail(f"SeaweedFS is needed for the S3 tests and could not start: {exc}")
    yield s
    s.stop()


class Team:
    """Switch the environment to one user: a key of the server, a home, a shared registry."""

    def __init__(self, server: SeaweedS3, tmp: Path, mp: pytest.MonkeyPatch) -> None:
        self.server, self.tmp, self.mp = server, tmp, mp
        self.prefix = f"models-{tmp.name[-24:]}".replace("_", "-")
        self.registry = f"sqlite:///{tmp / 'registry.db'}"

    def __call__(self, identity: str, registry: str | None = None) -> Vault:
        home = self.tmp / f"home-{identity}"
        env = {
            "MVAULT_HOME": str(home),
            "MVAULT_REGISTRY": registry or self.registry,
            "MVAULT_STORE": f"s3://team/{self.prefix}",
            "MVAULT_CACHE_DIR": str(home / "cache"),
            "MVAULT_USER": identity,
            **self.server.env(identity),
        }
        for k, v in env.items():
            self.mp.setenv(k, v)
        self.mp.delenv("AWS_ENDPOINT_URL", raising=False)
        self.mp.delenv("AWS_PROFILE", raising=False)
        config.reload()
        return Vault()

    def objects(self) -> set[str]:
        """Every object under this test's prefix, listed with the fixture's own key."""
        resp = self.server.client().list_objects_v2(Bucket="team", Prefix=f"{self.prefix}/")
        return {str(o["Key"]) for o in resp.get("Contents", [])}


@pytest.fixture
def team(server: SeaweedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Team:
    return Team(server, tmp_path, monkeypatch)


def _one_line(r: Result) -> str:
    lines = [ln for ln in r.err.splitlines() if ln.startswith("mvault: error:")]
    assert len(lines) == 1, r.err
    assert "Traceback" not in r.err and "botocore" not in r.err and "ClientError" not in r.err
    return lines[0]


def _rows(vault: Vault, table: Any) -> int:
    with vault.registry.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_what_seaweedfs_answers_a_read_only_key(server: SeaweedS3) -> None:
    """The oracle, asked directly: which calls a Read/List identity may make."""
    import botocore.exceptions

    admin, reader = server.client(), server.client("reader")
    admin.put_object(Bucket="team", Key="oracle/x", Body=b"x")
    assert reader.get_object(Bucket="team", Key="oracle/x")["Body"].read() == b"x"
    assert reader.head_object(Bucket="team", Key="oracle/x")["ContentLength"] == 1
    assert reader.list_objects_v2(Bucket="team", Prefix="oracle/")["KeyCount"] == 1
    for call, kw in [
        (reader.put_object, {"Key": "oracle/y", "Body": b"y"}),
        (reader.create_multipart_upload, {"Key": "oracle/z"}),
        (reader.delete_object, {"Key": "oracle/x"}),
        (reader.delete_object, {"Key": "oracle/never-existed"}),
    ]:
        with pytest.raises(botocore.exceptions.ClientError) as err:
            call(Bucket="team", **kw)
        assert err.value.response["Error"]["Code"] == "AccessDenied"
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    server.client("publisher").delete_object(Bucket="team", Key="oracle/x")


def test_read_only_key_pulls_loads_and_verifies(
    team: Team, mvault: Callable[..., Result], model_dir: Path, keys: Any, tmp_path: Path
) -> None:
    k = keys("release")
    team("publisher")
    r = mvault(
        "push", "vision/enc:1.0.0", str(model_dir), "--alias", "prod", "--sign", str(k.private)
    )
    assert r.code == 0, r.err

    reader = team("reader")
    assert [m.name for m in reader.list()] == ["vision/enc"]
    out = tmp_path / "pulled"
    r = mvault("pull", "vision/enc@prod", "-o", str(out))
    assert r.code == 0, r.err
    assert (out / "weights.bin").read_bytes() == (model_dir / "weights.bin").read_bytes()
    loaded = Path(reader.load("vision/enc@prod"))
    assert (loaded / "config.json").read_text() == '{"layers": 2}\n'
    r = mvault("verify", "vision/enc@prod", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["checked"] == 5  # 3 files, the manifest, the signature
    r = mvault("verify", "vision/enc@prod", "--signatures", "--key", str(k.public))
    assert r.code == 0, r.err
    r = mvault("export", "vision/enc@prod", str(tmp_path / "enc.mvpk"))
    assert r.code == 0, r.err  # a bundle is written locally: reading is all it takes


@pytest.mark.parametrize("size", [4096, 6 * 1024 * 1024], ids=["put", "multipart"])
def test_read_only_key_push_is_refused_and_registers_nothing(
    team: Team,
    mvault: Callable[..., Result],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
) -> None:
    monkeypatch.setenv("MVAULT_S3_PART_SIZE", "5MiB")  # 6 MiB goes through a multipart upload
    src = tmp_path / "weights"
    src.mkdir()
    (src / "w.bin").write_bytes(b"\x01" * size)
    reader = team("reader")
    before = team.objects()
    r = mvault("push", "enc:1.0.0", str(src))
    assert r.code == 6
    line = _one_line(r)
    assert "AccessDenied: these credentials lack write permission (s3:PutObject)" in line
    assert f"s3://team/{team.prefix}" in line
    assert "a read-only key can pull, load and verify" in r.err  # the hint
    assert reader.list() == []
    assert _rows(reader, BlobLease) == 0 and _rows(reader, Event) == 0
    assert team.objects() == before

    # A bundle made elsewhere is refused the same way.
    team("publisher")
    assert mvault("push", "enc:1.0.0", str(src)).code == 0
    bundle = tmp_path / "enc.mvpk"
    assert mvault("export", "enc:1.0.0", str(bundle)).code == 0
    other = team("reader", registry=f"sqlite:///{tmp_path / 'other.db'}")
    monkeypatch.setenv("MVAULT_STORE", f"s3://team/{team.prefix}-other")
    config.reload()
    r = mvault("import", str(bundle))
    assert r.code == 6 and "lack write permission (s3:PutObject)" in _one_line(r)
    assert Vault().list() == [] and _rows(other, BlobLease) == 0


def test_read_only_key_sign_is_refused_and_attaches_nothing(
    team: Team, mvault: Callable[..., Result], model_dir: Path, keys: Any
) -> None:
    team("publisher")
    assert mvault("push", "enc:1.0.0", str(model_dir)).code == 0
    reader = team("reader")
    events = _rows(reader, Event)
    r = mvault("sign", "enc:1.0.0", "--key", str(keys("release").private))
    assert r.code == 6
    assert "lack write permission (s3:PutObject)" in _one_line(r)
    (variant,) = reader.resolve("enc:1.0.0").variants
    assert all(b.role != SIGNATURE_ROLE for b in variant.blobs)
    assert _rows(reader, Event) == events and _rows(reader, BlobLease) == 0


def test_read_only_key_cannot_delete_blobs(
    team: Team, mvault: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in (1, 2):
        d = tmp_path / f"m{n}"
        d.mkdir()
        (d / "w.bin").write_bytes(bytes([n]) * 1000)
    team("publisher")
    assert mvault("push", "enc:1.0.0", str(tmp_path / "m1")).code == 0
    assert mvault("push", "enc:2.0.0", str(tmp_path / "m2")).code == 0
    # Deleting a version is a registry change (this registry lets anyone make it) ...
    assert mvault("rm", "enc:2.0.0", "--yes").code == 0
    stored = team.objects()
    monkeypatch.setenv("MVAULT_GC_GRACE", "0")

    # ... and the blobs it leaves go at gc, which needs DeleteObject.
    reader = team("reader")
    r = mvault("gc")
    assert r.code == 6
    line = _one_line(r)
    assert "AccessDenied: these credentials lack delete permission (s3:DeleteObject)" in line
    assert "run it with a key that may delete" in r.err
    assert team.objects() == stored
    assert _rows(reader, BlobDeletion) == 0  # the refused gc dropped its decisions
    referenced = set(reader.registry.referenced_digests())
    orphans = [b.digest for b in reader.store.list() if b.digest not in referenced]
    assert len(orphans) == 2  # the weights and the manifest of 2.0.0
    with pytest.raises(StoreAccessError, match=r"delete permission \(s3:DeleteObject\)") as err:
        reader.store.delete(orphans[0])
    assert err.value.permission == "s3:DeleteObject"

    team("publisher")
    r = mvault("gc", "--json")
    assert r.code == 0, r.err
    assert len(json.loads(r.out)["removed"]) == 2  # the orphan weights and manifest
    assert len(team.objects()) == len(stored) - 2
    assert mvault("pull", "enc:1.0.0", "-o", str(tmp_path / "out")).code == 0


def test_read_write_key_does_everything(
    team: Team,
    mvault: Callable[..., Result],
    model_dir: Path,
    keys: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    k = keys("release")
    team("publisher")
    assert mvault("push", "enc:1.0.0", str(model_dir)).code == 0
    assert mvault("sign", "enc:1.0.0", "--key", str(k.private)).code == 0
    assert (
        mvault("push", "enc:1.1.0", str(model_dir / "weights.bin"), "--sign", str(k.private)).code
        == 0
    )
    assert mvault("export", "enc:1.1.0", str(tmp_path / "b.mvpk")).code == 0
    assert mvault("rm", "enc:1.1.0", "--yes").code == 0
    assert mvault("import", str(tmp_path / "b.mvpk"), "enc:1.2.0").code == 0
    assert mvault("pull", "enc:1.0.0", "-o", str(tmp_path / "out")).code == 0
    assert mvault("verify", "enc:1.0.0", "--signatures", "--key", str(k.public)).code == 0
    monkeypatch.setenv("MVAULT_GC_GRACE", "0")
    r = mvault("gc", "--json")
    assert r.code == 0, r.err
    assert mvault("verify", "--json").code == 0


@pytest.mark.postgres
def test_serving_node_and_publisher_with_database_roles(
    team: Team, mvault: Callable[..., Result], model_dir: Path, keys: Any, tmp_path: Path
) -> None:
    """The whole split: a serving node has a reader role and the read-only key, a
    publisher the publisher role and the read-write key. ``rm`` is refused by the
    database (the store never sees it); a push by the first thing that says no."""
    from modelvault.registry import upgrade
    from tests.registry.conftest import create_database, drop_database
    from tests.registry.test_grants import _make_user

    owner_url = create_database("postgresql")
    upgrade(owner_url)
    made = []
    try:
        team("publisher", registry=owner_url)
        roles = {}
        for kind in ("reader", "publisher"):
            name, url, drop = _make_user("postgresql", owner_url)
            made.append(drop)
            assert mvault("db", f"grant-{kind}", name, "--apply").code == 0
            roles[kind] = url

        k = keys("release")
        team("publisher", registry=roles["publisher"])
        r = mvault("push", "enc:1.0.0", str(model_dir), "--alias", "prod", "--sign", str(k.private))
        assert r.code == 0, r.err

        serving = team("reader", registry=roles["reader"])
        assert Path(serving.load("enc@prod")).is_dir()
        assert mvault("verify", "enc@prod", "--signatures", "--key", str(k.public)).code == 0
        before = team.objects()
        r = mvault("push", "enc:2.0.0", str(model_dir / "weights.bin"))
        assert r.code == 6 and "refused" in _one_line(r)  # the database: no lease for a reader
        r = mvault("rm", "enc:1.0.0", "--yes", "--force")
        assert r.code == 6 and "refused" in _one_line(r)
        assert team.objects() == before
        assert [v.version for v in serving.list("enc")] == ["1.0.0"]
    finally:
        for drop in made:
            drop()  # type: ignore[operator]
        drop_database(owner_url)
