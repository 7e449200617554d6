"""The registry half of the gc/push protocol: leases, deletion decisions, hand-over."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import delete, select, update

from modelvault.errors import InvalidArgumentError
from modelvault.registry import LeaseLapsedError, Registry
from modelvault.registry.schema import BlobDeletion, BlobLease, RegistryLock

from .helpers import digest, variant

LONG_AGO = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)


def expire(reg: Registry, table: type[BlobLease] | type[BlobDeletion]) -> None:
    column = table.expires_at if table is BlobLease else table.deadline  # type: ignore[union-attr]
    with reg.engine.begin() as conn:
        conn.execute(update(table).values({column.key: LONG_AGO}))


def blobs_of(seed: str, shared: str = "w") -> list[str]:
    return [digest("manifest:" + seed), digest("weights:" + shared)]


def test_decide_honours_references_leases_and_other_gcs(reg: Registry) -> None:
    reg.register_version("m", "1.0.0", [variant("kept", shared="kept-w")])
    lease, doomed = reg.take_lease(blobs_of("leased", "leased-w"), ttl_seconds=600)
    assert doomed == {}
    orphan = digest("orphan")
    candidates = [*blobs_of("kept", "kept-w"), *blobs_of("leased", "leased-w"), orphan]
    gc_id, decided, deadline = reg.decide_deletions(candidates, window_seconds=600)
    assert decided == [orphan]
    assert deadline > dt.datetime.now(dt.timezone.utc)
    # A second gc does not decide what the first is deleting.
    _, again, _ = reg.decide_deletions([orphan], window_seconds=600)
    assert again == []
    # A push that needs the orphan now learns that a gc is deleting it.
    _, doomed = reg.take_lease([orphan], ttl_seconds=600)
    assert set(doomed) == {orphan}
    assert reg.pending_deletions([orphan, *blobs_of("kept", "kept-w")]) == doomed
    assert not reg.clear_stale_deletion(orphan)  # not past its deadline: still pending
    reg.finish_deletions(gc_id, [orphan])
    assert reg.pending_deletions([orphan]) == {}
    assert reg.clear_stale_deletion(orphan)
    reg.release_lease(lease)
    assert digest("weights:leased-w") not in reg.leased_digests()


def test_expired_leases_protect_nothing(reg: Registry) -> None:
    held = blobs_of("crashed")
    reg.take_lease(held, ttl_seconds=600)
    assert reg.decide_deletions(held, window_seconds=600)[1] == []
    expire(reg, BlobLease)
    assert reg.leased_digests() == set()
    _, decided, _ = reg.decide_deletions(held, window_seconds=600)
    assert sorted(decided) == sorted(held)
    with reg.engine.connect() as conn:  # gc dropped the expired lease rows
        assert conn.execute(select(BlobLease.blob_digest)).all() == []


def test_registration_hands_the_lease_over_in_its_transaction(reg: Registry) -> None:
    v = variant("a")
    lease, _ = reg.take_lease([b[0] for b in v.blobs], ttl_seconds=600)
    assert reg.leased_digests() == {b[0] for b in v.blobs}
    _, created = reg.register_version("m", "1.0.0", [v], lease=lease)
    assert created
    assert reg.leased_digests() == set()
    assert reg.decide_deletions([b[0] for b in v.blobs], window_seconds=60)[1] == []


def test_lapsed_lease_registers_nothing(reg: Registry) -> None:
    v = variant("a")
    lease, _ = reg.take_lease([b[0] for b in v.blobs], ttl_seconds=600)
    expire(reg, BlobLease)
    with pytest.raises(LeaseLapsedError, match="lapsed before its version was registered"):
        reg.register_version("m", "1.0.0", [v], lease=lease)
    assert reg.list_versions("m").items == []
    assert not reg.renew_lease(lease, ttl_seconds=600)
    other = variant("other")
    reg.register_version("m", "1.0.0", [other])
    with pytest.raises(LeaseLapsedError):
        reg.add_variant("m", "1.0.0", variant("trt", kind="tensorrt"), lease=lease)
    got = reg.get_version("m", "1.0.0").variants
    assert [x.manifest_digest for x in got] == [other.manifest_digest]


def test_renewal_and_stale_decisions(reg: Registry) -> None:
    lease, _ = reg.take_lease(blobs_of("a"), ttl_seconds=1)
    assert reg.renew_lease(lease, ttl_seconds=600)
    _, decided, _ = reg.decide_deletions([digest("x")], window_seconds=600)
    assert decided == [digest("x")]
    assert reg.sweep_deletions() == 0
    expire(reg, BlobDeletion)  # that gc crashed long ago
    assert reg.clear_stale_deletion(digest("x"))
    reg.decide_deletions([digest("y")], window_seconds=600)
    expire(reg, BlobDeletion)
    assert reg.sweep_deletions() == 1


def test_missing_lock_row_is_recreated(reg: Registry) -> None:
    with reg.engine.begin() as conn:
        conn.execute(delete(RegistryLock))
    reg.take_lease(blobs_of("a"), ttl_seconds=60)
    with reg.engine.connect() as conn:
        assert conn.execute(select(RegistryLock.name)).scalars().all() == ["blobs"]


@pytest.mark.parametrize("ttl", [0, -1, True, "60", 10**8])
def test_bad_durations(reg: Registry, ttl: object) -> None:
    with pytest.raises(InvalidArgumentError, match="seconds must be > 0"):
        reg.take_lease(blobs_of("a"), ttl_seconds=ttl)  # type: ignore[arg-type]


def test_bad_digests_are_refused_before_anything_is_written(reg: Registry) -> None:
    with pytest.raises(InvalidArgumentError, match="is not a digest"):
        reg.take_lease([digest("a"), "../../etc/passwd"], ttl_seconds=60)
    assert reg.leased_digests() == set()
