"""The ``files`` format: any file or directory tree, byte for byte.

Each regular file is one blob (identical files are stored once); the payload
lists the tree: paths, kinds (file, dir, symlink), the executable bit, and
symlink targets. Unpacking refuses any path that would land outside the target
directory (``..``, absolute paths, symlinks pointing out), extracts into a
staging directory, verifies every byte, and renames into place only when all
of it is good.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
from pathlib import Path
from typing import Any

from ..digest import read_verified_into
from ..errors import ManifestError, PayloadMismatchError, UnsafePathError
from .base import FormatPlugin
from .container import ContainerSource, Draft, FileSource, make_parents, remove_dirs

__all__ = ["FilesPlugin", "check_link_target", "check_relative_path"]

MEDIA_TYPE = "application/octet-stream"
MAX_PATH = 4096
MAX_ENTRIES = 1_000_000


def check_relative_path(path: object, what: str = "path") -> str:
    """Return ``path`` if it is a safe relative POSIX path inside a tree, else raise.

    >>> check_relative_path("a/b.txt")
    'a/b.txt'
    """
    if not isinstance(path, str) or not path:
        raise UnsafePathError(f"{what} must be a non-empty string")
    if len(path) > MAX_PATH or "\x00" in path or not path.isprintable():
        raise UnsafePathError(f"{what} {path!r:.80} has control characters or is too long")
    if path.startswith("/") or "\\" in path or (len(path) > 1 and path[1] == ":"):
        raise UnsafePathError(f"{what} {path!r:.80} is absolute; only relative paths are allowed")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePathError(f"{what} {path!r:.80} has an empty, '.' or '..' component")
    return path


def check_link_target(path: str, target: object) -> str:
    """Return ``target`` if symlink ``path`` (relative to the tree root) may point there.

    A target is relative; after dropping empty and ``.`` components it is some
    ``..`` components followed only by names, and the ``..`` never climb above
    the root. Forbidding ``..`` after a name matters: ``d/link/..`` leaves the
    tree when ``d/link`` is itself a symlink to the root, although it looks
    like ``d`` on paper. Each link then resolves inside the tree, and so do
    chains of them.

    >>> check_link_target("a/link", "../b/c")
    '../b/c'
    """
    if not isinstance(target, str) or not target:
        raise UnsafePathError(f"symlink {path!r:.80} has an empty or non-string target")
    if "\x00" in target or len(target) > MAX_PATH or not target.isprintable():
        raise UnsafePathError(
            f"symlink {path!r:.80} has a target with control characters or too long"
        )
    if target.startswith("/"):
        raise UnsafePathError(
            f"symlink {path!r:.80} has an absolute target {target!r:.80}; only relative targets stay inside the tree"
        )
    parts = [p for p in target.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if ".." in parts[ups:]:
        raise UnsafePathError(
            f"symlink {path!r:.80} -> {target!r:.80}: '..' may only lead the target, not follow a name"
        )
    if ups > path.count("/"):
        raise UnsafePathError(f"symlink {path!r:.80} points outside the tree ({target!r:.80})")
    return target


class FilesPlugin(FormatPlugin):
    """Files and directory trees, byte-identical, executable bits kept."""

    name = "files"
    version = "1"
    description = "any file or directory tree"

    def can_pack(self, obj: Any) -> bool:
        return isinstance(obj, (str, os.PathLike)) and Path(obj).exists()

    def can_pack_path(self, path: Path) -> bool:
        return path.exists() or path.is_symlink()

    # -- pack -----------------------------------------------------------------
    def pack(self, obj: Any, *, follow_symlinks: bool = False, **options: Any) -> Draft:
        root = Path(obj)
        if not (root.exists() or root.is_symlink()):
            raise FileNotFoundError(f"{root} does not exist")
        draft = Draft(self.name, self.version)
        entries: list[dict[str, Any]] = []
        blob_of: dict[tuple[int, int], int] = {}

        def add_file(path: Path, rel: str) -> None:
            st = path.stat()
            key = (st.st_dev, st.st_ino)  # hard links share a blob without hashing twice
            if key not in blob_of:
                blob_of[key] = draft.add_blob("file", MEDIA_TYPE, FileSource(path, 0, st.st_size))
            entries.append(
                {
                    "blob": blob_of[key],
                    "executable": bool(st.st_mode & stat.S_IXUSR),
                    "path": rel,
                    "type": "file",
                }
            )

        if root.is_file() and (follow_symlinks or not root.is_symlink()):
            add_file(root, check_relative_path(root.name))
            draft.payload = {"entries": entries, "root": "file"}
            return draft
        if root.is_symlink() and not follow_symlinks:
            raise PayloadMismatchError(
                f"{root} is a symlink", hint="pack its target, or pass follow_symlinks=True"
            )
        if not root.is_dir():
            raise PayloadMismatchError(f"{root} is neither a regular file nor a directory")

        root_real = root.resolve()
        for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_symlinks):
            dirnames.sort()
            here = Path(dirpath)
            rel_dir = here.relative_to(root).as_posix()
            if rel_dir != ".":
                entries.append({"path": check_relative_path(rel_dir), "type": "dir"})
            for name in sorted(filenames) + [
                d for d in dirnames if (here / d).is_symlink() and not follow_symlinks
            ]:
                path = here / name
                rel = (here / name).relative_to(root).as_posix()
                check_relative_path(rel)
                if path.is_symlink() and not follow_symlinks:
                    target = os.readlink(path)
                    resolved = (path.parent / target).resolve()
                    try:
                        check_link_target(rel, target)
                        if not resolved.is_relative_to(root_real):
                            raise UnsafePathError(
                                f"symlink {rel!r:.80} points outside the tree ({target!r:.80})"
                            )
                    except UnsafePathError as exc:
                        raise UnsafePathError(
                            exc.message,
                            hint="copy its target into the tree, or pack with follow_symlinks=True",
                        ) from None
                    entries.append({"path": rel, "target": target, "type": "symlink"})
                elif path.is_file():
                    add_file(path, rel)
                elif not path.is_dir():
                    raise PayloadMismatchError(f"{rel} is not a regular file, directory or symlink")
            if not follow_symlinks:
                dirnames[:] = [d for d in dirnames if not (here / d).is_symlink()]
        draft.payload = {"entries": entries, "root": "dir"}
        return draft

    # -- load -------------------------------------------------------------------
    def load(
        self,
        source: ContainerSource,
        *,
        device: str = "cpu",
        dest: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> Path:
        """Unpack into ``dest`` (a new path) or a fresh temporary directory; returns the path."""
        if dest is None:
            import tempfile  # here: its import (with random) costs a plain push start-up

            dest = Path(tempfile.mkdtemp(prefix="mvault-files-")) / "content"
        return self.export_native(source, Path(dest))

    def validate(self, source: ContainerSource) -> None:
        """Every entry is a safe relative path, every link stays inside, every blob exists."""
        super().validate(source)
        _parse_payload(source)

    def native_suffix(self, source: ContainerSource) -> str:
        return ""

    def export_native(self, source: ContainerSource, dest: Path, **options: Any) -> Path:
        entries, root_kind = _parse_payload(source)
        dest = Path(dest)
        if dest.exists() or dest.is_symlink():
            raise FileExistsError(f"{dest} already exists; choose a new path")
        created = make_parents(dest.parent)
        try:
            import tempfile

            staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        except BaseException:
            remove_dirs(created)
            raise
        try:
            if root_kind == "file":
                (entry,) = entries
                _extract_file(source, entry, staging / "f")
                os.replace(staging / "f", dest)
                staging.rmdir()
                return dest
            tree = staging / "t"
            tree.mkdir()
            for e in entries:
                if e["type"] == "dir":
                    (tree / e["path"]).mkdir(parents=True, exist_ok=True)
            for e in entries:
                if e["type"] == "file":
                    target = tree / e["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _extract_file(source, e, target)
            # Symlinks last, so none can redirect a later write.
            for e in entries:
                if e["type"] == "symlink":
                    link = tree / e["path"]
                    link.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(e["target"], link)
            os.replace(tree, dest)
            staging.rmdir()
            return dest
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            remove_dirs(created)
            raise


def _parse_payload(source: ContainerSource) -> tuple[list[dict[str, Any]], str]:
    m = source.manifest
    payload = m.payload
    root = payload.get("root")
    raw = payload.get("entries")
    if root not in ("file", "dir") or not isinstance(raw, list):
        raise ManifestError(
            "files payload must have 'root' ('file' or 'dir') and a list of 'entries'"
        )
    if len(raw) > MAX_ENTRIES:
        raise ManifestError(f"files payload lists {len(raw)} entries; the limit is {MAX_ENTRIES}")
    seen: set[str] = set()
    kinds: dict[str, str] = {}
    out = []
    for i, e in enumerate(raw):
        if not isinstance(e, dict) or e.get("type") not in ("file", "dir", "symlink"):
            raise ManifestError(f"files entry {i} must be a map with type file, dir or symlink")
        path = check_relative_path(e.get("path"), f"files entry {i} path")
        if path in seen:
            raise ManifestError(f"files entry {i}: duplicate path {path!r:.80}")
        seen.add(path)
        kinds[path] = e["type"]
        if e["type"] == "file":
            blob = e.get("blob")
            if not isinstance(blob, int) or isinstance(blob, bool) or not 0 <= blob < len(m.blobs):
                raise ManifestError(
                    f"files entry {i} ({path!r:.80}) names blob {blob!r}, which does not exist"
                )
            if not isinstance(e.get("executable"), bool):
                raise ManifestError(f"files entry {i} ({path!r:.80}) needs a boolean 'executable'")
        if e["type"] == "symlink":
            check_link_target(path, e.get("target"))
        out.append(e)
    if root == "file" and (len(out) != 1 or out[0]["type"] != "file" or "/" in out[0]["path"]):
        raise ManifestError("a single-file container must list exactly one top-level file")
    # No entry may live under a symlink or a file: that is how extraction escapes.
    for path in seen:
        parent = posixpath.dirname(path)
        while parent:
            if kinds.get(parent) in ("symlink", "file"):
                raise UnsafePathError(f"{path!r:.80} lies under {kinds[parent]} {parent!r:.80}")
            parent = posixpath.dirname(parent)
    return out, root


def _extract_file(source: ContainerSource, entry: dict[str, Any], target: Path) -> None:
    index = entry["blob"]
    ref = source.manifest.blobs[index]
    loc = source.locate(index)
    with loc.path.open("rb", buffering=0) as src, open(target, "xb") as out:

        def write(chunk: memoryview) -> None:
            out.write(chunk)

        src.seek(loc.offset)
        read_verified_into(
            src,
            ref.size,
            ref.digest,
            write,
            where=f"{entry['path']} ({loc.path})",
        )
        out.flush()
        os.fsync(out.fileno())
    os.chmod(target, 0o755 if entry["executable"] else 0o644)
