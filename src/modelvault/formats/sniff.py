"""What a file claims to be, told from its name, magic bytes and zip member names.

Detection asks this module first, so pushing a plain file never imports torch:
only a file that is (or is named like) a torch archive or a ``.safetensors``
file is handed to the torch plugins. Nothing here executes or unpickles
anything; it reads at most a zip's central directory and 9 header bytes.

    >>> from pathlib import Path
    >>> sniff(Path("/etc/hostname")).kind is None
    True
"""

from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TORCH_SUFFIXES", "Sniffed", "sniff"]

#: Names under which torch archives and tensor files are saved by convention.
TORCH_SUFFIXES = frozenset({".pt2", ".pt", ".pth", ".ts", ".jit", ".ep", ".safetensors"})
#: Kinds of file a plugin can declare it packs (``PluginSpec.packs``).
TORCH_ARCHIVE = "torch-archive"
SAFETENSORS = "safetensors"
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class Sniffed:
    """``kind`` is what the bytes are (None: nothing we know); ``claimed`` what the name says."""

    kind: str | None
    claimed: str | None
    detail: str = ""


def _zip_kind(path: Path) -> tuple[str | None, str]:
    try:
        if not zipfile.is_zipfile(path):
            return None, "not a zip archive (or a truncated one)"
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        return None, f"an unreadable zip archive ({exc})"
    tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
    torchish = (
        "data.pkl" in tails
        or "archive_format" in tails
        or "serialized_exported_program.json" in tails
        or any(t.startswith(("models/", "code/", ".data/")) for t in tails)
    )
    if torchish:
        return TORCH_ARCHIVE, "a torch archive"
    return None, "a zip archive without torch members"


def _is_safetensors(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= _MAX_SAFETENSORS_HEADER and head[8:9] == b"{"


def sniff(path: Path) -> Sniffed:
    """What ``path`` is and what its name claims it is (see the module docstring)."""
    suffix = path.suffix.lower()
    claimed = None
    if suffix == ".safetensors":
        claimed = SAFETENSORS
    elif suffix in TORCH_SUFFIXES:
        claimed = TORCH_ARCHIVE
    if not path.is_file():  # a directory (the files format), whatever its name
        return Sniffed(None, None, "not a regular file")
    if _is_safetensors(path):
        return Sniffed(SAFETENSORS, claimed, "a safetensors file")
    kind, detail = _zip_kind(path)
    if kind is None and claimed == SAFETENSORS:
        detail = "not a safetensors file (no 8-byte header length followed by a JSON header)"
    return Sniffed(kind, claimed, detail)
