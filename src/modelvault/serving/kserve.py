"""``mvault pull mvault://NAME@SPEC /mnt/models``: KServe's storage-initializer contract.

KServe runs the ``ClusterStorageContainer`` whose ``supportedUriFormats``
matches the ``storageUri`` with two arguments, the URI and the directory the
model server reads (``/mnt/models``, an ``emptyDir`` that already exists).
The version's native form lands inside that directory: a single-file form
as ``model<suffix>`` (``model.pt2``, ``model.pt``, ``model.safetensors``), a
directory form as its files. Every byte is verified on the way (the load
pipeline); nothing is left behind on failure but what was there before.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["export_native", "pull_into"]


def export_native(
    vault: Any, spec: str, directory: Path, stem: str, *, variant: str | None, device: str
) -> Path:
    """The chosen variant's native form as ``directory/stem<suffix>`` (through the load pipeline)."""
    from ..formats.registry import get_plugin

    pipeline = vault.pipeline
    choice = pipeline.choose(pipeline.resolve(spec), device, variant)

    def use(source: Any) -> Path:
        plugin = get_plugin(source.manifest.plugin)
        out: Path = plugin.export_native(
            source, directory / f"{stem}{plugin.native_suffix(source)}"
        )
        return out

    result: Path = pipeline.deserialize(choice.variant, use)
    return result


def pull_into(
    vault: Any, spec: str, dest: Path, *, variant: str | None = None, device: str = "cpu"
) -> list[Path]:
    """Write the version's native form into the directory ``dest``; returns what was written."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".mvault-", dir=dest))
    try:
        out = export_native(vault, spec, staging, "model", variant=variant, device=device)
        if out.is_file():
            target = dest / out.name
            if target.exists():
                raise FileExistsError(f"{target} already exists")
            os.replace(out, target)
            return [target]
        moved = []
        clashes = [p.name for p in out.iterdir() if (dest / p.name).exists()]
        if clashes:
            raise FileExistsError(f"{dest / clashes[0]} already exists")
        for p in sorted(out.iterdir()):
            os.replace(p, dest / p.name)
            moved.append(dest / p.name)
        return moved
    finally:
        shutil.rmtree(staging, ignore_errors=True)
