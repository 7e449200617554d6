"""What ``inspect`` calls intact and ``import`` registers is what a pull can load.

:func:`validate_container` runs after every blob has been verified: it finds
the container's plugin (by name, in the plugin table only: a name is never
imported as a module) and lets it check its payload's meaning
(:meth:`~modelvault.formats.base.FormatPlugin.validate`). Nothing that can
run code is deserialized on the way.
"""

from __future__ import annotations

from ..errors import PluginNotFoundError, UnknownFormatError
from .container import ContainerSource
from .registry import get_plugin

__all__ = ["validate_container"]


def validate_container(source: ContainerSource) -> None:
    """Raise a :class:`~modelvault.errors.FormatError` when ``source`` could not be loaded."""
    name = source.manifest.plugin
    try:
        plugin = get_plugin(name)
    except PluginNotFoundError as exc:
        raise UnknownFormatError(
            f"the container's format plugin {name!r:.80} is not installed here, so it cannot be loaded",
            hint=exc.hint or "install the package that provides it",
        ) from exc
    plugin.validate(source)
