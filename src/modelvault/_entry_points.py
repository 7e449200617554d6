"""Whether any installed distribution can declare an entry point in a group,
answered without importing :mod:`importlib.metadata`.

Reading entry points through :mod:`importlib.metadata` costs a command's
start-up tens of milliseconds on its own (the module imports the ``email``
package, ``zipfile``, ``csv`` and more), and a push of a plain file reads them
only to ask installed plugins whether one of them packs the file: in almost
every environment no distribution declares one. :func:`may_declare` looks for
that cheaply and errs only one way: it answers False only when no
distribution that :mod:`importlib.metadata` can see has an entry in the group,
and True whenever it finds one or cannot be sure (a zip or egg on
``sys.path``, a third-party distribution finder, a file it cannot read). The
caller then reads the entry points through :mod:`importlib.metadata` as before,
so what is found is always what the standard library finds.

What it mirrors (``importlib.metadata.MetadataPathFinder``): every entry of
``sys.path`` (``""`` is the working directory) is searched for children named
``*.dist-info`` or ``*.egg-info`` (case-insensitively); a distribution's
entry points are the file ``entry_points.txt`` in that directory, an INI file
whose ``[group]`` sections list ``name = value`` lines.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

__all__ = ["may_declare"]

_META_SUFFIXES = (".dist-info", ".egg-info")


def may_declare(group: str, path: Iterable[str] | None = None) -> bool:
    """False only when no distribution on ``path`` (default ``sys.path``) declares
    an entry point in ``group``; True when one does or the scan cannot tell."""
    if path is None:
        if _other_finders():
            return True
        path = sys.path
    for entry in path:
        if not isinstance(entry, (str, os.PathLike)):
            return True  # bytes and the like: the standard library decides (it raises on them)
        try:
            root = os.fspath(entry) or "."
            if not isinstance(root, str):
                return True
            if not os.path.isdir(root):
                if os.path.exists(root):
                    return True  # a zip (or another file) importlib.metadata would open
                continue
            if root.lower().endswith(".egg"):
                return True  # an unpacked egg: its metadata is laid out otherwise
            with os.scandir(root) as children:
                metas = [c.path for c in children if c.name.lower().endswith(_META_SUFFIXES)]
        except (OSError, ValueError):
            return True
        for meta in metas:
            if _declares(os.path.join(meta, "entry_points.txt"), group):
                return True
    return False


def _other_finders() -> bool:
    """True when a finder other than the standard path finder can list distributions."""
    from importlib.machinery import PathFinder

    for finder in sys.meta_path:
        if finder is PathFinder:
            continue
        if getattr(finder, "find_distributions", None) is not None:
            return True
    return False


def _declares(txt: str, group: str) -> bool:
    try:
        with open(txt, "rb") as f:
            raw = f.read()
    except (FileNotFoundError, NotADirectoryError):
        return False  # no such file, or an egg-info that is a file (PKG-INFO): no entry points
    except OSError:
        return True
    if group.encode() not in raw:
        return False  # the group's name appears nowhere in the file
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    inside = False
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):  # the only comment the standard library knows
            continue
        if s.startswith("[") and s.endswith("]"):  # a header, as the standard library reads one
            inside = s.strip("[]").strip() == group
            continue
        if inside:
            return True
    return False
