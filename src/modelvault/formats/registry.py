"""The lazy table of format plugins.

Built-in plugins are named here by ``"module:Class"`` and imported on first
use, so ``import modelvault`` never imports torch or torch_tensorrt. Third
parties register through the ``modelvault.formats`` entry-point group.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._entry_points import may_declare
from ..errors import MissingDependencyError, PluginNotFoundError, UnknownFormatError
from .base import FormatPlugin
from .sniff import SAFETENSORS, TORCH_ARCHIVE, sniff

__all__ = [
    "PluginSpec",
    "available",
    "detect",
    "detect_path",
    "get_plugin",
    "known_plugins",
    "register",
]


@dataclass(frozen=True)
class PluginSpec:
    """Where a plugin lives and what it needs."""

    name: str
    target: str  # "package.module:Class"
    requires: tuple[str, ...] = ()  # importable module names the plugin needs
    extra: str | None = None  # the pip extra that installs them
    #: Detection order: lower goes first (specific formats before generic ones).
    priority: int = 50
    #: The kinds of file (:mod:`.sniff`) the plugin packs; detection imports it
    #: only for those. ``None`` (third-party plugins): asked about every file.
    packs: tuple[str, ...] | None = None


_BUILTIN: dict[str, PluginSpec] = {
    spec.name: spec
    for spec in (
        PluginSpec(
            "torch_tensorrt",
            "modelvault.formats.torch_tensorrt:TorchTensorRTPlugin",
            ("torch",),
            "torch",
            priority=10,
            packs=(TORCH_ARCHIVE,),
        ),
        PluginSpec(
            "exported_program",
            "modelvault.formats.exported_program:ExportedProgramPlugin",
            ("torch",),
            "torch",
            priority=20,
            packs=(TORCH_ARCHIVE,),
        ),
        PluginSpec(
            "torchscript",
            "modelvault.formats.torchscript:TorchScriptPlugin",
            ("torch",),
            "torch",
            priority=20,
            packs=(TORCH_ARCHIVE,),
        ),
        PluginSpec(
            "tensors",
            "modelvault.formats.tensors:TensorsPlugin",
            ("torch",),
            "torch",
            priority=30,
            packs=(SAFETENSORS,),
        ),
        PluginSpec("files", "modelvault.formats.files:FilesPlugin", priority=90, packs=()),
    )
}
#: The entry-point group third-party format plugins are declared in.
ENTRY_POINT_GROUP = "modelvault.formats"
_extra: dict[str, PluginSpec] = {}
_instances: dict[str, FormatPlugin] = {}
_entry_points_loaded = False


def register(spec: PluginSpec) -> None:
    """Register a plugin at run time (tests, applications embedding modelvault)."""
    _extra[spec.name] = spec
    _instances.pop(spec.name, None)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    if may_declare(ENTRY_POINT_GROUP):
        from importlib import metadata  # only then: it costs start-up tens of milliseconds

        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name not in _BUILTIN and ep.name not in _extra:
                _extra[ep.name] = PluginSpec(ep.name, ep.value)
    # Set once the lookup succeeded: a failed one is tried again by the next caller.
    _entry_points_loaded = True


def known_plugins() -> dict[str, PluginSpec]:
    """Every plugin name, built-in and registered, sorted by detection priority."""
    _load_entry_points()
    table = {**_BUILTIN, **_extra}
    return dict(sorted(table.items(), key=lambda kv: (kv[1].priority, kv[0])))


def _missing(spec: PluginSpec) -> str | None:
    for mod in spec.requires:
        try:
            found = importlib.util.find_spec(mod)
        except (ImportError, ValueError):
            found = None
        if found is None:
            return mod
    return None


def _spec(name: str) -> PluginSpec | None:
    """The plugin named ``name``: a built-in one without reading entry points (they never
    replace a built-in), any other after reading them."""
    spec = _extra.get(name) or _BUILTIN.get(name)
    if spec is None and not _entry_points_loaded:
        _load_entry_points()
        spec = _extra.get(name)
    return spec


def available(name: str) -> bool:
    """True when the plugin's dependencies are importable (does not import them)."""
    spec = _spec(name)
    return spec is not None and _missing(spec) is None


def get_plugin(name: str) -> FormatPlugin:
    """The plugin instance for ``name``, imported on first use."""
    if name in _instances:
        return _instances[name]
    spec = _spec(name)
    if spec is None:
        raise PluginNotFoundError(
            f"no format plugin named {name!r}; known: {', '.join(known_plugins())}",
            hint="install the package that provides it, or check the spelling",
        )
    missing = _missing(spec)
    if missing is not None:
        raise MissingDependencyError(missing, spec.extra, f"the {name} format")
    module_name, _, attr = spec.target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise MissingDependencyError(
            exc.name or module_name, spec.extra, f"the {name} format"
        ) from exc
    plugin = cls()
    if not isinstance(plugin, FormatPlugin):
        raise PluginNotFoundError(f"{spec.target} is not a modelvault FormatPlugin")
    _instances[name] = plugin
    return plugin


def _candidates() -> list[FormatPlugin]:
    out = []
    for name in known_plugins():
        if available(name):
            try:
                out.append(get_plugin(name))
            except MissingDependencyError:
                continue
    return out


def detect(obj: Any) -> FormatPlugin:
    """The plugin that packs a live object, or :class:`UnknownFormatError`."""
    if isinstance(obj, (str, Path)):
        return detect_path(Path(obj))
    for plugin in _candidates():
        if plugin.can_pack(obj):
            return plugin
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.nn.Module):
        # A live module is code: it is stored as the graph torch.export records
        # (format="torchscript" scripts or traces it instead).
        return get_plugin("exported_program")
    raise UnknownFormatError(
        f"no format plugin recognises an object of type {type(obj).__module__}.{type(obj).__qualname__}",
        hint="pass format=... to name the plugin; `mvault doctor` lists the installed ones",
    )


def detect_path(path: Path) -> FormatPlugin:
    """The plugin that packs the file or directory at ``path``.

    The file is sniffed first (:mod:`.sniff`, no torch import): a plugin is
    imported only when the file is a kind it declares it packs. A file whose
    bytes or name say it is a torch archive or a ``.safetensors`` file is
    packed by a plugin that parses it or refused, never stored as plain bytes
    by accident (``format="files"`` does that on purpose).
    """
    if not (path.exists() or path.is_symlink()):
        raise FileNotFoundError(f"{path} does not exist")
    found = sniff(path)
    table = known_plugins()
    kind = found.kind or found.claimed
    if kind is not None:
        wanted = [s for s in table.values() if s.packs is not None and kind in s.packs]
        missing = [s for s in wanted if _missing(s) is not None]
        for spec in wanted:
            if spec in missing:
                continue
            plugin = get_plugin(spec.name)
            if plugin.can_pack_path(path):
                return plugin
        what = "a .safetensors file" if kind == SAFETENSORS else "a torch archive"
        if missing and len(missing) == len(wanted):
            raise MissingDependencyError(
                str(_missing(missing[0])), missing[0].extra, f"pushing {path.name} ({what})"
            )
        if found.kind is None:
            raise UnknownFormatError(
                f"{path} is named like {what} but is {found.detail}: truncated or corrupt",
                hint="push the intact file, or --format files to store these bytes as they are",
            )
        raise UnknownFormatError(
            f"{path} is {found.detail}, but no format plugin can read it"
            + (
                " (a torch.save checkpoint is a pickle, which modelvault never loads)"
                if kind == TORCH_ARCHIVE
                else ""
            ),
            hint="push what it holds (a state dict, an ExportedProgram), or --format files to store the bytes",
        )
    for spec in table.values():
        if spec.packs is None and _missing(spec) is None:
            plugin = get_plugin(spec.name)
            if plugin.can_pack_path(path):
                return plugin
    return get_plugin("files")
