"""The format plugin interface.

A plugin knows one kind of model: how to recognise it (a live object or a
file), how to turn it into a :class:`~modelvault.formats.container.Draft`, how
to rebuild it from a container onto a device, and how to write it back out in
its native form (so users can always leave modelvault).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from ..errors import PayloadMismatchError
from .container import ContainerSource, Draft

__all__ = ["FormatPlugin", "check_blob_references"]


def check_blob_references(source: ContainerSource) -> None:
    """Every ``"blob"`` key of the payload is a blob index of this container (not a bool)."""
    n = len(source.manifest.blobs)

    def walk(v: Any, where: str, depth: int) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                w = f"{where}.{k}"
                if k == "blob" and not (type(x) is int and 0 <= x < n):
                    raise PayloadMismatchError(
                        f"{w} is {x!r:.40}; the container has blobs 0..{n - 1}",
                        hint="the container is damaged or was assembled by hand",
                    )
                walk(x, w, depth + 1)
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, f"{where}[{i}]", depth + 1)

    walk(dict(source.manifest.payload), "payload", 0)


class FormatPlugin(ABC):
    """Base class of every format plugin. Subclasses set ``name`` and ``version``.

    ``version`` is the plugin's own layout version, recorded in each manifest;
    a plugin must keep reading every layout version it ever wrote.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    #: "portable" runs anywhere its framework runs; "tensorrt" is tied to hardware.
    kind: ClassVar[str] = "portable"
    #: Human-readable summary for ``mvault doctor`` and error messages.
    description: ClassVar[str] = ""

    def can_pack(self, obj: Any) -> bool:
        """True when ``obj`` (a live object, not a path) is something this plugin packs."""
        return False

    def can_pack_path(self, path: Path) -> bool:
        """True when the file or directory at ``path`` is something this plugin packs."""
        return False

    @abstractmethod
    def pack(self, obj: Any, **options: Any) -> Draft:
        """Turn a live object or a path into a draft container.

        Must validate everything before returning; must not write anywhere.
        """

    @abstractmethod
    def load(self, source: ContainerSource, *, device: str = "cpu", **options: Any) -> Any:
        """Rebuild the object from a container onto ``device``.

        Must verify every blob that can run code before deserializing it.
        """

    def validate(self, source: ContainerSource) -> None:
        """Refuse a container whose payload this plugin could not load.

        Called by ``inspect``, ``import`` and bundle pushes after every blob was
        verified, and before anything is registered; it may read (verified)
        blobs but must not deserialize anything that can run code. The default
        checks only that payload ``"blob"`` references are blob indices; plugins
        override it to check their whole payload.
        """
        check_blob_references(source)

    def export_native(self, source: ContainerSource, dest: Path, **options: Any) -> Path:
        """Write the native form (a ``.pt2``, a TorchScript archive, a directory) to ``dest``."""
        raise NotImplementedError(f"the {self.name} format has no native export")

    def native_suffix(self, source: ContainerSource) -> str:
        """File name suffix of :meth:`export_native`'s output (``""`` for a directory)."""
        return ""
