"""Hostile containers as an attacker builds them, and every way modelvault could open one.

A bundle is assembled from ``docs/FORMAT.md`` alone (``conftest.assemble``), with
every CRC and digest recomputed, so only its meaning is hostile. The same
manifest and blobs are also put in a store and registered as a version
directly, as someone with write access to the database and the bucket could.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import modelvault
from modelvault import Vault
from modelvault.errors import FormatError, ModelVaultError
from modelvault.formats.bundle import Bundle
from modelvault.formats.container import Draft, finalize
from modelvault.formats.manifest import Manifest
from modelvault.formats.validation import validate_container
from modelvault.registry import VariantInput
from tests.formats.conftest import assemble

MANIFEST_MEDIA_TYPE = "application/vnd.modelvault.manifest.v1+msgpack"


def draft_parts(draft: Draft) -> tuple[Manifest, list[bytes]]:
    """The manifest and the bytes of each of its blobs, in manifest order."""
    draft.compute_digests()
    manifest = finalize(draft)
    blobs: dict[str, bytes] = {}
    for b in draft.blobs:
        assert b.digest is not None
        blobs.setdefault(b.digest, b"".join(bytes(c) for c in b.source.chunks()))
    return manifest, [blobs[ref.digest] for ref in manifest.blobs]


def bundle_from(manifest: Manifest | dict[str, Any], blobs: list[bytes], path: Path) -> Path:
    wire = manifest.to_wire() if isinstance(manifest, Manifest) else manifest
    # the preamble states the manifest's format version, as the writer does
    version = wire.get("format", [1, 0]) if isinstance(wire, dict) else [1, 0]
    minor = version[1] if isinstance(version, list) and len(version) == 2 else 0
    path.write_bytes(assemble(wire, blobs, minor=minor if isinstance(minor, int) else 0))
    return path


def register_row(vault: Vault, manifest: Manifest, blobs: list[bytes], name: str) -> str:
    """Put the manifest and blobs in the store and register them as ``name@1.0.0``."""
    for ref, data in zip(manifest.blobs, blobs):
        vault.store.put_bytes(ref.digest, data)
    encoded = manifest.encode()
    vault.store.put_bytes(manifest.digest, encoded)
    refs = [(b.digest, b.size, b.role, b.media_type) for b in manifest.blobs]
    refs.append((manifest.digest, len(encoded), "manifest", MANIFEST_MEDIA_TYPE))
    vault.registry.register_version(
        name,
        "1.0.0",
        [
            VariantInput(
                manifest_digest=manifest.digest,
                format=manifest.plugin,
                kind="portable",
                requirements=dict(manifest.target),
                size=manifest.total_size + len(encoded),
                blobs=refs,
            )
        ],
    )
    return f"{name}@1.0.0"


def refused(call: Callable[[], Any], marker: Path | None = None) -> ModelVaultError:
    """``call`` fails with a modelvault error, and (when given) ``marker`` was not created."""
    with pytest.raises(ModelVaultError) as info:
        call()
    if marker is not None:
        assert not marker.exists(), f"code ran: {marker} exists"
    assert str(info.value)
    return info.value


def every_way_refused(
    bundle: Path, manifest: Manifest, blobs: list[bytes], tmp: Path, marker: Path | None
) -> list[ModelVaultError]:
    """inspect, import, and pull/load of a registry row: each refused, nothing registered."""
    vault = Vault(registry=f"sqlite:///{tmp}/registry.db", store=f"file://{tmp}/store")
    errors = []

    def inspect() -> None:
        b = Bundle.open(bundle)
        b.verify()
        validate_container(b)

    errors.append(refused(inspect, marker))
    errors.append(refused(lambda: vault.import_bundle(bundle, "imported", "1.0.0"), marker))
    assert vault.list() == [], "an invalid bundle was registered"
    spec = register_row(vault, manifest, blobs, "row")
    errors.append(refused(lambda: vault.pull(spec, tmp / "pulled"), marker))
    errors.append(refused(lambda: vault.load(spec), marker))
    assert not (tmp / "pulled").exists() or not any((tmp / "pulled").iterdir())
    for e in errors[:2]:  # what inspect and import say; a pull may also lack the plugin
        assert isinstance(e, FormatError), repr(e)
    return errors


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real ``mvault`` in a new process (the tree under test first on the path)."""
    src = str(Path(modelvault.__file__).resolve().parents[1])
    # The tree under test first; whatever else the caller's path holds (a --target
    # site of dependencies, as on the GPU machine) after it.
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    full = {**os.environ, **(env or {}), "PYTHONPATH": path, "MVAULT_NO_PROGRESS": "1"}
    code = "import sys; from modelvault.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=300,
        check=False,
    )
