"""Blob references, push leases and gc's deletion decisions.

The protocol that keeps ``gc`` from deleting a blob a push relies on is
argued in :mod:`modelvault.maintenance`; this module holds its database half.
Three tables take part:

* ``blob_leases``: a push holds every digest it will reference, from before
  it looks in the store until the transaction that registers its version;
* ``blob_deletions``: the digests a ``gc`` has decided to delete, until it
  has deleted them (or its ``deadline`` passes);
* ``registry_locks``: the row ``blobs``, locked exclusively while ``gc``
  decides and shared while a push takes or hands over a lease, so a decision
  and a lease are never interleaved: each sees the other whole, or not at all.

Times are the database's clock (:func:`db_now`), not the client's: members
of a team share one database but not one clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence

from sqlalchemy import Table, delete, func, insert, select, text, update
from sqlalchemy.orm import Session

from ..errors import RegistryError
from . import answers
from .schema import Blob, BlobDeletion, BlobLease, RegistryLock, VariantBlob
from .writes import add_event, insert_ignore

__all__ = [
    "blob_digests",
    "db_now",
    "decide_deletions",
    "finish_deletions",
    "forget_blobs",
    "guard",
    "hand_over",
    "leased_digests",
    "pending_deletions",
    "referenced_digests",
    "release",
    "renew",
    "sweep",
    "take",
]

LOCK_NAME = "blobs"
_CHUNK = 500  # digests per IN list


def _table(model: type[object]) -> Table:
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


def _chunks(items: Iterable[str]) -> Iterator[list[str]]:
    ordered = sorted(set(items))
    for i in range(0, len(ordered), _CHUNK):
        yield ordered[i : i + _CHUNK]


def db_now(session: Session) -> dt.datetime:
    """The database server's current UTC time, timezone-aware."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        value = session.execute(text("SELECT clock_timestamp()")).scalar_one()
    elif name == "sqlite":
        raw = session.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar_one()
        value = dt.datetime.fromisoformat(str(raw))
    else:
        value = session.execute(text("SELECT UTC_TIMESTAMP(6)")).scalar_one()
    assert isinstance(value, dt.datetime)
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def guard(session: Session, *, exclusive: bool) -> None:
    """Lock the ``blobs`` row of ``registry_locks`` (shared or exclusive) for this transaction.

    A missing row (a database emptied by hand) is put back first: locking
    nothing would silently lose the protection. SQLite needs no row lock:
    every writer there holds the database's one write lock (BEGIN IMMEDIATE).
    """
    stmt = (
        select(RegistryLock.name)
        .where(RegistryLock.name == LOCK_NAME)
        .with_for_update(read=not exclusive)
    )
    if session.execute(stmt).first() is not None:
        return
    insert_ignore(session, _table(RegistryLock), [{"name": LOCK_NAME}], ["name"])
    if session.execute(stmt).first() is None:  # pragma: no cover - the insert just made it
        raise RegistryError("the registry's blob lock row could not be created")


def pending_deletions(session: Session, digests: Iterable[str]) -> dict[str, dt.datetime]:
    """The digests among ``digests`` a ``gc`` has decided to delete, with its deadline."""
    found: dict[str, dt.datetime] = {}
    for chunk in _chunks(digests):
        for digest, deadline in session.execute(
            select(BlobDeletion.blob_digest, BlobDeletion.deadline).where(
                BlobDeletion.blob_digest.in_(chunk)
            )
        ):
            found[digest] = deadline
    return found


def take(
    session: Session, lease_id: str, digests: Sequence[str], ttl: dt.timedelta
) -> dict[str, dt.datetime]:
    """Hold ``digests`` for a push; returns those a ``gc`` had already decided to delete.

    Once this commits no ``gc`` decides to delete any of them while the lease
    lives; the digests returned were decided before, and their blobs must not
    be trusted until that ``gc`` is done (see ``maintenance.PushLease``).
    """
    guard(session, exclusive=False)
    expires = db_now(session) + ttl
    rows = [
        {"lease_id": lease_id, "blob_digest": d, "expires_at": expires}
        for d in sorted(set(digests))
    ]
    for i in range(0, len(rows), _CHUNK):
        insert_ignore(session, _table(BlobLease), rows[i : i + _CHUNK], ["lease_id", "blob_digest"])
    return pending_deletions(session, digests)


def renew(session: Session, lease_id: str, ttl: dt.timedelta) -> bool:
    """Push the lease's expiry to now + ``ttl``; False when it had already lapsed."""
    guard(session, exclusive=False)
    now = db_now(session)
    total, alive = _counts(session, lease_id, now)
    if total == 0 or alive < total:
        return False
    session.execute(
        update(BlobLease).where(BlobLease.lease_id == lease_id).values(expires_at=now + ttl)
    )
    return True


def _counts(session: Session, lease_id: str, now: dt.datetime) -> tuple[int, int]:
    total = session.execute(
        select(func.count()).select_from(BlobLease).where(BlobLease.lease_id == lease_id)
    ).scalar_one()
    alive = session.execute(
        select(func.count())
        .select_from(BlobLease)
        .where(BlobLease.lease_id == lease_id, BlobLease.expires_at > now)
    ).scalar_one()
    return int(total), int(alive)


def hand_over(session: Session, lease_id: str, digests: Iterable[str]) -> None:
    """In the transaction that adds references to ``digests``: check that the lease still
    held every one of them, then drop it. The references take over its protection."""
    guard(session, exclusive=False)
    now = db_now(session)
    wanted = set(digests)
    alive: set[str] = set()
    for chunk in _chunks(wanted):
        alive.update(
            session.scalars(
                select(BlobLease.blob_digest).where(
                    BlobLease.lease_id == lease_id,
                    BlobLease.blob_digest.in_(chunk),
                    BlobLease.expires_at > now,
                )
            )
        )
    lapsed = sorted(wanted - alive)
    if lapsed:
        raise answers.lease_lapsed(lapsed)
    release(session, lease_id)


def release(session: Session, lease_id: str) -> None:
    """Drop a lease (the push failed, or its blobs are referenced now)."""
    session.execute(delete(BlobLease).where(BlobLease.lease_id == lease_id))


def leased_digests(session: Session) -> set[str]:
    """Every digest some unexpired lease holds."""
    now = db_now(session)
    return set(
        session.scalars(select(BlobLease.blob_digest).where(BlobLease.expires_at > now).distinct())
    )


def decide_deletions(
    session: Session, gc_id: str, candidates: Iterable[str], window: dt.timedelta
) -> tuple[list[str], dt.datetime]:
    """Decide which ``candidates`` ``gc_id`` deletes: those no variant references, no
    unexpired lease holds and no other ``gc`` is deleting. Returns them and the deadline
    by which this ``gc`` stops deleting. Expired leases are dropped on the way."""
    guard(session, exclusive=True)
    now = db_now(session)
    deadline = now + window
    session.execute(delete(BlobLease).where(BlobLease.expires_at <= now))
    decided: list[str] = []
    for chunk in _chunks(candidates):
        busy = set(
            session.scalars(
                select(VariantBlob.blob_digest).where(VariantBlob.blob_digest.in_(chunk))
            )
        )
        busy.update(
            session.scalars(select(BlobLease.blob_digest).where(BlobLease.blob_digest.in_(chunk)))
        )
        busy.update(
            session.scalars(
                select(BlobDeletion.blob_digest).where(BlobDeletion.blob_digest.in_(chunk))
            )
        )
        free = [d for d in chunk if d not in busy]
        if free:
            session.execute(
                insert(BlobDeletion),
                [
                    {"blob_digest": d, "gc_id": gc_id, "decided_at": now, "deadline": deadline}
                    for d in free
                ],
            )
            decided.extend(free)
    return decided, deadline


def finish_deletions(session: Session, gc_id: str, deleted: Iterable[str], user: str) -> set[str]:
    """``gc_id`` is done: drop its decisions, and the ``blobs`` rows of what it deleted."""
    session.execute(delete(BlobDeletion).where(BlobDeletion.gc_id == gc_id))
    return forget_blobs(session, deleted, user)


def sweep(session: Session) -> int:
    """Drop the decisions of ``gc`` runs whose deadline passed (they crashed or gave up)."""
    now = db_now(session)
    gone = session.execute(delete(BlobDeletion).where(BlobDeletion.deadline < now))
    return max(int(gone.rowcount or 0), 0)  # type: ignore[attr-defined]


def clear_stale(session: Session, digest: str) -> bool:
    """Drop the decision on ``digest`` if its deadline passed; True when none is left."""
    now = db_now(session)
    session.execute(
        delete(BlobDeletion).where(BlobDeletion.blob_digest == digest, BlobDeletion.deadline < now)
    )
    return not pending_deletions(session, [digest])


def referenced_digests(session: Session) -> set[str]:
    """Every blob digest some variant refers to (manifests included)."""
    return set(session.scalars(select(VariantBlob.blob_digest).distinct()))


def blob_digests(session: Session, seen_before: dt.datetime | None) -> set[str]:
    """Every blob the registry has recorded (optionally only those first seen before a time)."""
    query = select(Blob.digest)
    if seen_before is not None:
        query = query.where(Blob.first_seen < seen_before)
    return set(session.scalars(query))


def forget_blobs(session: Session, digests: Iterable[str], user: str) -> set[str]:
    """Drop the ``blobs`` rows no variant refers to; returns the digests forgotten."""
    gone: set[str] = set()
    for chunk in _chunks(digests):
        still = set(
            session.scalars(
                select(VariantBlob.blob_digest).where(VariantBlob.blob_digest.in_(chunk))
            )
        )
        drop = [d for d in chunk if d not in still]
        if drop:
            session.execute(delete(Blob).where(Blob.digest.in_(drop)))
            gone.update(drop)
    if gone:
        add_event(session, "blob.forget", user, count=len(gone))
    return gone
