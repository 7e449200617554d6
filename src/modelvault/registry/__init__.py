"""The registry: the SQL catalogue of models, versions, variants, aliases, labels and events.

    >>> from modelvault.registry import Registry, VariantInput
    >>> reg = Registry()                      # the embedded SQLite default  # doctest: +SKIP
    >>> reg.resolve("resnet50@prod")          # doctest: +SKIP

``upgrade(url)`` and ``current(url)`` back ``mvault db upgrade`` / ``mvault db current``.

Where things are: :mod:`.api` holds the one class, :class:`Registry`, which
validates (:mod:`.checks`) and runs each call in one transaction over plain
functions taking a session: :mod:`.reads`, :mod:`.writes`, :mod:`.aliases`,
:mod:`.blobs` (leases and gc decisions). :mod:`.db` owns engines, retries,
the schema check and migrations; :mod:`._sqlite` the SQLite file (opened
read-only by ``Registry(read_only=True)``, never created by a read);
:mod:`.schema` the tables.
"""

from __future__ import annotations

from .api import Registry
from .blobs import LeaseLapsedError
from .db import current, upgrade
from .results import (
    AliasChange,
    AliasInfo,
    BlobRef,
    DeleteResult,
    EventInfo,
    ModelInfo,
    Page,
    VariantInfo,
    VariantInput,
    VersionInfo,
)
from .semver import SemVer
from .specs import Spec, parse_ref, parse_spec, validate_name

__all__ = [
    "AliasChange",
    "AliasInfo",
    "BlobRef",
    "DeleteResult",
    "EventInfo",
    "LeaseLapsedError",
    "ModelInfo",
    "Page",
    "Registry",
    "SemVer",
    "Spec",
    "VariantInfo",
    "VariantInput",
    "VersionInfo",
    "current",
    "parse_ref",
    "parse_spec",
    "upgrade",
    "validate_name",
]
