"""Fixtures for end-to-end tests: the CLI in-process, users with their own homes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.conftest import Result, mvault  # noqa: F401  (re-exported fixture)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A small model as a directory: weights, a config, an executable script."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "weights.bin").write_bytes(bytes(range(256)) * 400)
    (d / "config.json").write_text('{"layers": 2}\n')
    (d / "serve.sh").write_text("#!/bin/sh\nexec python serve.py\n")
    (d / "serve.sh").chmod(0o755)
    return d


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*") if p.is_file()} if path.exists() else set()


RunCLI = Callable[..., Result]
