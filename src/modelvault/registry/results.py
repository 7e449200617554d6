"""Plain dataclasses the registry hands to callers (never ORM objects)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .semver import SemVer

__all__ = [
    "AliasChange",
    "AliasInfo",
    "BlobRef",
    "DeleteResult",
    "EventInfo",
    "ModelInfo",
    "Page",
    "VariantInfo",
    "VariantInput",
    "VersionInfo",
]

T = TypeVar("T")


@dataclass(frozen=True)
class BlobRef:
    """A blob a variant refers to, with its role in the container."""

    digest: str
    size: int
    role: str
    media_type: str


@dataclass(frozen=True)
class VariantInput:
    """What :meth:`Registry.register_version` needs to know about one variant (one manifest).

    ``blobs`` lists ``(digest, size, role, media_type)`` for every blob the
    manifest names *and the manifest itself* with role ``"manifest"``, so that
    garbage collection never removes a blob a variant still needs.
    """

    manifest_digest: str
    format: str
    kind: str
    requirements: dict[str, Any]
    size: int
    blobs: list[tuple[str, int, str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class VariantInfo:
    """One registered variant of a version."""

    manifest_digest: str
    format: str
    kind: str
    requirements: dict[str, Any]
    size: int
    created_at: dt.datetime
    created_by: str
    blobs: list[BlobRef]


@dataclass(frozen=True)
class VersionInfo:
    """One version with its variants, labels and the aliases that point at it."""

    model: str
    version: str
    major: int
    minor: int
    patch: int
    prerelease: str
    build: str
    created_at: dt.datetime
    created_by: str
    description: str | None
    labels: dict[str, str]
    aliases: list[str]
    variants: list[VariantInfo]

    @property
    def semver(self) -> SemVer:
        return SemVer.parse(self.version)

    @property
    def ref(self) -> str:
        """``name:version``, the form ``mvault pull`` accepts."""
        return f"{self.model}:{self.version}"


@dataclass(frozen=True)
class ModelInfo:
    """A model, its number of versions, its highest release and its aliases."""

    name: str
    description: str | None
    created_at: dt.datetime
    created_by: str
    version_count: int
    latest: str | None
    aliases: dict[str, str]


@dataclass(frozen=True)
class AliasInfo:
    """Where an alias points now."""

    model: str
    alias: str
    version: str
    updated_at: dt.datetime
    updated_by: str


@dataclass(frozen=True)
class AliasChange:
    """One entry of an alias's history: ``set``, ``move`` or ``remove``."""

    alias: str
    action: str
    version: str | None
    previous: str | None
    at: dt.datetime
    by: str


@dataclass(frozen=True)
class EventInfo:
    """One entry of the events log."""

    id: int
    at: dt.datetime
    user: str
    kind: str
    model: str | None
    version: str | None
    alias: str | None
    details: dict[str, Any]


@dataclass(frozen=True)
class DeleteResult:
    """What :meth:`Registry.delete_version` removed."""

    model: str
    version: str
    variants: list[str]
    aliases_removed: list[str]


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing; pass ``next_cursor`` back for the next one (None at the end)."""

    items: list[T]
    next_cursor: str | None
