"""The format plugin interface.

A plugin knows one kind of model: how to recognise it (a live object or a
file), how to turn it into a :class:`~modelvault.formats.container.Draft`, how
to rebuild it from a container onto a device, and how to write it back out in
its native form (so users can always leave modelvault).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import PayloadMismatchError
from .container import ContainerSource, Draft
from .manifest import Manifest

__all__ = [
    "Built",
    "FormatPlugin",
    "SiblingNeed",
    "VersionView",
    "check_blob_references",
    "not_a_file",
]


# -- what a plugin may ask of the version it belongs to (sibling variants, build on miss) --


@dataclass(frozen=True)
class SiblingNeed:
    """A load of this variant needs another variant of the same version.

    The caller finds the version's variant whose format is ``format`` and
    passes its verified :class:`ContainerSource` to :meth:`FormatPlugin.load`
    as the keyword ``option``; when the version has none it raises
    :class:`~modelvault.errors.NoCompatibleVariantError` with ``why``.
    """

    option: str
    format: str
    why: str


@dataclass(frozen=True)
class VersionView:
    """One version's variants, as a plugin may see them: no vault, no store, no registry.

    ``variants`` are the registry's variant records (``format``, ``kind``,
    ``manifest_digest``, ``requirements``); ``manifest`` reads one variant's
    verified manifest (no blob fetched); ``source`` opens one variant's
    verified container, its blobs local.
    """

    name: str
    version: str
    variants: Sequence[Any]
    manifest: Callable[[Any], Manifest]
    source: Callable[[Any], ContainerSource]


@dataclass
class Built:
    """What :meth:`FormatPlugin.build` made: the live object, and the options that push it back."""

    obj: Any
    push_options: Mapping[str, Any] = field(default_factory=dict)


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

    # -- sibling variants and build on miss: the caller (the load pipeline) drives these --
    def siblings_needed(self, manifest: Manifest) -> Sequence[SiblingNeed]:
        """Other variants of the same version that :meth:`load` of this one needs (none by default)."""
        return ()

    def can_build(self, device: str, best: Any | None, view: VersionView) -> bool:
        """True when, asked to build on miss, this plugin would build a new variant for ``device``.

        ``best`` is the variant the loader would load otherwise (``None`` when
        nothing fits). Called only when the caller asked for a build; must not
        import heavy dependencies or fetch blobs.
        """
        return False

    def build(
        self,
        view: VersionView,
        *,
        device: str,
        settings: Mapping[str, Any],
        options: Mapping[str, Any],
    ) -> Built:
        """Build a variant of ``view``'s version on ``device``; the caller pushes it back with
        ``format=self.name, variant=True, **push_options`` and returns ``obj``."""
        raise NotImplementedError(f"the {self.name} format builds no variants")


def not_a_file(path: Path, kind: str) -> Exception:
    """The error for a path a plugin needs as a ``kind`` file: missing, or a directory."""
    from ..errors import UnknownFormatError

    if path.exists():
        return UnknownFormatError(
            f"{path} is a directory, not a {kind} file",
            hint="name the file inside it, or push the directory with --format files",
        )
    return FileNotFoundError(f"{path} does not exist")
