"""Format 1.2 deflates manifests: another zlib build (zlib-ng, another level) makes
other bytes, so another digest, for the same content. Pushing the same version
again from such a machine is "unchanged", not a conflict; exporting keeps the
stored bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelvault import Vault
from modelvault.errors import VersionExistsError
from modelvault.formats import manifest as manifest_mod


def test_the_same_version_pushed_from_another_deflater_is_unchanged(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v = Vault(registry=f"sqlite:///{tmp_path / 'r.db'}", store=f"file://{tmp_path / 'store'}")
    first = v.push(model_dir, "m", "1.0.0")
    assert first.created
    monkeypatch.setattr(manifest_mod, "DEFLATE_LEVEL", 1)  # as another machine's zlib would
    again = v.push(model_dir, "m", "1.0.0")
    assert not again.created and again.digest == first.digest
    # Other content is still a conflict.
    (model_dir / "config.json").write_text('{"layers": 3}\n')
    with pytest.raises(VersionExistsError):
        v.push(model_dir, "m", "1.0.0")
    # What the other machine would store under that version is not left referenced.
    (variant,) = v.resolve("m:1.0.0").variants
    assert variant.manifest_digest == first.digest
    v.close()
