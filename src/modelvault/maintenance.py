"""Keeping a vault healthy: re-hash what the store holds, collect what nothing references,
and the push-side half of the protocol that keeps ``gc`` from ever deleting a blob
a published version needs.

``Vault.verify`` and ``Vault.gc`` call :func:`verify` and :func:`gc`; the push
paths of ``Vault`` hold a :class:`PushLease`.

The gc/push protocol
--------------------
Invariant: every blob a registered variant references is in the store.

A push that finds a blob already stored skips its upload. Store timestamps
cannot protect that blob: a skipped upload does not refresh an S3 object's
LastModified, and clients do not share a clock. So the decision is made in
the registry, from rows, in transactions ordered by one lock row (shared for
pushes, exclusive for ``gc``; on SQLite every writer holds the one write lock).

Push (:class:`PushLease`, ``Registry.register_version(..., lease=...)``):

  P1. Take a lease on every digest the version will reference (manifest
      included), expiring after ``LEASE_TTL`` on the database's clock, BEFORE
      looking in the store. The same transaction returns the digests on which a
      ``gc`` has already decided deletion.
  P2. For such a digest, wait until that decision is gone (its ``gc`` has
      finished deleting) or its deadline has passed (its ``gc`` has stopped
      deleting, see G3); only then look.
  P3. Look in the store; upload what is absent. Renew the lease (at a third of
      its life) while uploading and waiting; a lapsed lease fails the push.
  P4. Register in one transaction: check the lease is still unexpired on every
      digest, insert the references, delete the lease.

gc (:func:`gc`, ``Registry.decide_deletions``):

  G1. List the store; drop referenced blobs and blobs younger than the grace
      period (a hint and a belt: the argument below does not rely on it).
  G2. Decide in one transaction under the exclusive lock: a candidate gets a
      deletion row with a deadline (now + ``DELETE_WINDOW``, database clock)
      only when no variant references it, no unexpired lease holds it and no
      other ``gc`` is deleting it.
  G3. Delete the decided blobs, and only while less than ``DELETE_WINDOW -
      DELETE_MARGIN`` has passed on a monotonic clock started before G2.
  G4. Drop its deletion rows (and the ``blobs`` rows of what it deleted).

Why no interleaving loses a blob. Say ``gc`` deletes blob d in G3 under a
decision committed at G2, and a push registers a reference to d at P4. The
lock orders G2 against the push's P1 and P4 transactions.

* P4 before G2: G2 sees the reference and does not decide d.
* P1 before G2 before P4: G2 sees the lease. P4 found it unexpired, and a
  lease only lives on by renewals made while unexpired, so it was unexpired at
  G2 too: G2 does not decide d.
* G2 before P1: P1 sees the decision, so P2 waits until this ``gc`` has done
  every delete of d (G4 comes after G3), or until the deadline, after which G3
  issues none; or P1 sees no decision because G4 has already run. P3 then looks: d is absent and uploaded, or present and not
  deleted by this ``gc`` after that. Every later decision comes after P1 and
  meets the lease (second case) until P4, and the reference after P4 (first
  case).

What it assumes: no ``gc`` process stalls for longer than ``DELETE_MARGIN``
between its clock check and its delete reaching the store; a push that stalls
longer than its lease fails at P4 (nothing registered) instead of losing a
blob. A crashed push pins its blobs until its lease expires; a crashed ``gc``
leaves deletion rows that pushes and the next ``gc`` drop after the deadline.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import settings
from .digest import damaged, digest_file
from .errors import IntegrityError

if TYPE_CHECKING:
    from .registry import Registry
    from .storage.base import BlobStore
    from .vault import Vault

__all__ = ["DELETE_MARGIN", "DELETE_WINDOW", "LEASE_TTL", "PushLease", "gc", "verify"]

#: A push's lease lives this long without renewal (a crashed push pins its blobs this long).
#: Renewals happen between blobs, so one blob's upload must take less than this.
LEASE_TTL = 60 * 60.0
#: A gc run stops deleting this long after its decision; waiting pushes then go ahead.
DELETE_WINDOW = 10 * 60.0
#: The part of the window a gc leaves unused, for a store call already under way.
DELETE_MARGIN = 60.0
# How a push waits for a gc that is deleting a blob it needs (tests replace it to observe).
_pause = time.sleep


class PushLease:
    """A push's hold on the blobs it will reference (steps P1 to P3 of the protocol).

    >>> with PushLease(vault.registry, vault.store) as lease:        # doctest: +SKIP
    ...     lease.protect(digests)                                   # before any store lookup
    ...     if not lease.present(digest):
    ...         store.put_file(digest, path)
    ...     registry.register_version(..., lease=lease.id)           # P4 hands it over

    Leaving the block releases whatever the registration did not hand over.
    """

    def __init__(self, registry: Registry, store: BlobStore, *, ttl: float = LEASE_TTL) -> None:
        self.registry = registry
        self.store = store
        self.ttl = ttl
        self.id: str | None = None
        self._doomed: dict[str, dt.datetime] = {}
        self._renewed = 0.0

    def __enter__(self) -> PushLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def protect(self, digests: Iterable[str]) -> None:
        """P1: hold every digest the version will reference; call once, before any lookup."""
        if self.id is not None:
            raise RuntimeError("a PushLease protects one set of digests")
        self.id, self._doomed = self.registry.take_lease(set(digests), ttl_seconds=self.ttl)
        self._renewed = time.monotonic()

    def present(self, digest: str) -> bool:
        """P2 and P3: True when the store holds ``digest`` and may be trusted to keep it
        (skip the upload); False when it must be uploaded. Waits out a ``gc`` that had
        decided to delete it before this lease was taken."""
        if self.id is None:
            raise RuntimeError("protect() the digests before looking them up")
        if digest in self._doomed:
            delay = 0.01
            while not self.registry.clear_stale_deletion(digest):
                _pause(delay)
                delay = min(delay * 2, 1.0)
                self.keep_alive()
            del self._doomed[digest]
        self.keep_alive()
        return self.store.exists(digest)

    def keep_alive(self) -> None:
        """Renew the lease once a third of its life has passed; a lapsed lease raises."""
        if self.id is None or time.monotonic() - self._renewed < self.ttl / 3:
            return
        if not self.registry.renew_lease(self.id, ttl_seconds=self.ttl):
            from .registry import LeaseLapsedError

            raise LeaseLapsedError(
                f"the push's hold on its blobs lapsed (no renewal within {self.ttl:.0f} s); "
                "nothing was registered",
                hint="push again: blobs still in the store are not uploaded twice",
            )
        self._renewed = time.monotonic()

    def handed_over(self) -> None:
        """The registration took the lease over (and deleted it): nothing left to release."""
        self.id = None

    def release(self) -> None:
        """Drop the lease (a registration already handed it over: then this deletes nothing)."""
        if self.id is not None:
            lease, self.id = self.id, None
            self.registry.release_lease(lease)


def verify(vault: Vault, spec: str | None = None, *, progress: Any = None) -> dict[str, Any]:
    """Re-hash the blobs of one version (or of every variant) in the store.

    Returns ``{"checked": n, "bytes": b, "missing": [...], "damaged": [...]}``.
    """
    if spec is not None:
        variants = vault.resolve(spec).variants
        digests: dict[str, int] = {}
        for v in variants:
            for blob in v.blobs:
                digests[blob.digest] = blob.size
    else:
        digests = dict.fromkeys(vault.registry.referenced_digests(), 0)
    report: dict[str, Any] = {"checked": 0, "bytes": 0, "missing": [], "damaged": []}
    store = vault.store
    for digest in sorted(digests):
        info = store.stat(digest)
        if info is None:
            report["missing"].append(digest)
            continue
        local = store.local_path(digest)
        try:
            if local is not None:
                actual = digest_file(local, digest.split(":", 1)[0])
                if actual != digest:
                    raise damaged(digest, actual, str(local))
            else:
                import tempfile

                with tempfile.TemporaryDirectory() as tmp:
                    store.get_file(digest, Path(tmp) / "blob", progress=progress, verify=True)
        except IntegrityError as exc:
            report["damaged"].append({"digest": digest, "actual": exc.actual, "where": store.url})
            continue
        report["checked"] += 1
        report["bytes"] += info.size
    return report


def gc(vault: Vault, *, grace_seconds: int | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Delete store blobs no variant references and no push holds, once older than the grace
    period (steps G1 to G4 of the protocol in the module docstring).

    Returns ``{"removed", "bytes", "kept_within_grace", "kept_in_use", "dry_run"}``;
    ``kept_in_use`` counts old unreferenced blobs a push in flight holds (or another
    ``gc`` is deleting).
    """
    grace = settings().gc_grace_seconds if grace_seconds is None else grace_seconds
    cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=grace)
    registry, store = vault.registry, vault.store
    referenced = registry.referenced_digests()
    candidates, kept_young = {}, 0
    for info in store.list():
        if info.digest in referenced:
            continue
        modified = info.modified
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=dt.timezone.utc)
        if modified > cutoff:
            kept_young += 1
        else:
            candidates[info.digest] = info
    if dry_run:
        leased = registry.leased_digests()
        removed = sorted(d for d in candidates if d not in leased)
    else:
        registry.sweep_deletions()
        started = time.monotonic()
        gc_id, decided, _ = registry.decide_deletions(
            list(candidates), window_seconds=DELETE_WINDOW
        )
        removed = []
        try:
            for digest in decided:
                if time.monotonic() - started > DELETE_WINDOW - DELETE_MARGIN:
                    break  # past the window: waiting pushes may trust the store again
                store.delete(digest)
                removed.append(digest)
        finally:
            registry.finish_deletions(gc_id, removed)
    return {
        "removed": removed,
        "bytes": sum(candidates[d].size for d in removed),
        "kept_within_grace": kept_young,
        "kept_in_use": len(candidates) - len(removed),
        "dry_run": dry_run,
    }
