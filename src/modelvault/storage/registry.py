"""Which class serves which store URL scheme, imported only when first used.

Built-in back ends are listed in :data:`KNOWN`; third parties register more
under the ``modelvault.stores`` entry-point group, ``scheme = "pkg.mod:Class"``.
A store class provides ``from_url(url) -> BlobStore``.

    >>> store = open_store("file:///srv/models")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import InvalidArgumentError, MissingDependencyError, PluginNotFoundError
from .base import BlobStore

__all__ = ["KNOWN", "open_store", "store_class"]

#: scheme -> (``"module:Class"``, the extra that installs its dependency, that dependency)
KNOWN: dict[str, tuple[str, str | None, str | None]] = {
    "file": ("modelvault.storage.local:LocalStore", None, None),
    "s3": ("modelvault.storage.s3:S3Store", "s3", "boto3"),
    "memory": ("modelvault.storage.memory:MemoryStore", None, None),
}
ENTRY_POINT_GROUP = "modelvault.stores"


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def store_class(scheme: str) -> type[BlobStore]:
    """The class for a URL scheme; imports its module (and its dependency) now."""
    if scheme in KNOWN:
        target, extra, package = KNOWN[scheme]
        try:
            cls = _load(target)
        except ImportError as exc:
            missing = (exc.name or "").split(".")[0]
            if package is not None and missing in (package, "botocore", "boto3", "s3transfer"):
                raise MissingDependencyError(
                    package=package, extra=extra, purpose=f"the {scheme}:// store"
                ) from exc
            raise
        return cls  # type: ignore[no-any-return]
    from importlib.metadata import entry_points  # only for a scheme not built in

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == scheme:
            return ep.load()  # type: ignore[no-any-return]
    known = sorted(set(KNOWN) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
    raise PluginNotFoundError(
        f"no blob store handles {scheme}:// URLs (known: {', '.join(known)})",
        hint="check the store URL, or install the package that provides this store",
    )


def open_store(url: str) -> BlobStore:
    """Open the store a URL names: ``file:///path`` (or a plain path), ``s3://bucket/prefix``, ``memory://name``."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidArgumentError(f"store URL must be a non-empty string, got {url!r:.80}")
    scheme = url.split("://", 1)[0].lower() if "://" in url else "file"
    store: BlobStore = store_class(scheme).from_url(url)  # type: ignore[attr-defined]
    return store
