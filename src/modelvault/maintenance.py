"""Keeping a vault healthy: re-hash what the store holds, collect what nothing references.

``Vault.verify`` and ``Vault.gc`` call these.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import settings
from .digest import damaged, digest_file
from .errors import IntegrityError

if TYPE_CHECKING:
    from .vault import Vault

__all__ = ["gc", "verify"]


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
                with tempfile.TemporaryDirectory() as tmp:
                    store.get_file(digest, Path(tmp) / "blob", progress=progress, verify=True)
        except IntegrityError as exc:
            report["damaged"].append({"digest": digest, "actual": exc.actual, "where": store.url})
            continue
        report["checked"] += 1
        report["bytes"] += info.size
    return report


def gc(vault: Vault, *, grace_seconds: int | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Delete store blobs no variant references, once older than the grace period.

    The grace period protects pushes in flight: their blobs are written before
    the version is registered, so they look unreferenced for a moment.
    """
    grace = settings().gc_grace_seconds if grace_seconds is None else grace_seconds
    cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=grace)
    referenced = vault.registry.referenced_digests()
    candidates, kept_young = [], 0
    for info in vault.store.list():
        if info.digest in referenced:
            continue
        modified = info.modified
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=dt.timezone.utc)
        if modified > cutoff:
            kept_young += 1
        else:
            candidates.append(info)
    if not dry_run and candidates:
        # Read the references once more right before deleting: a push that
        # started before the listing may have registered its version since.
        referenced = vault.registry.referenced_digests()
        candidates = [c for c in candidates if c.digest not in referenced]
        for info in candidates:
            vault.store.delete(info.digest)
    removed = [c.digest for c in candidates]
    freed = sum(c.size for c in candidates)
    if not dry_run and removed:
        vault.registry.forget_blobs(removed)
    return {
        "removed": removed,
        "bytes": freed,
        "kept_within_grace": kept_young,
        "dry_run": dry_run,
    }
