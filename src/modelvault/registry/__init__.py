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
:mod:`.schema` the tables. :mod:`.lite` runs the everyday commands' calls on
the embedded SQLite file with the standard library alone (no SQLAlchemy
import) and hands the rest to a :class:`Registry`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import LeaseLapsedError
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

if TYPE_CHECKING:
    from .api import Registry
    from .db import current, upgrade

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


def __getattr__(name: str) -> Any:
    # Registry, upgrade and current import SQLAlchemy: only when asked for (PEP 562), so
    # a command on the lite registry (lite.py) or one that only needs the result types
    # does not pay for it.
    if name == "Registry":
        from .api import Registry

        return Registry
    if name in ("current", "upgrade"):
        from . import db

        return getattr(db, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
