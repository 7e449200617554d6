"""Test-wide isolation: every test gets its own MVAULT_HOME and a fresh config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelvault import config

_VARS = (
    "MVAULT_HOME",
    "MVAULT_REGISTRY",
    "MVAULT_STORE",
    "MVAULT_CACHE_DIR",
    "MVAULT_CACHE_SIZE",
    "MVAULT_USER",
    "MVAULT_GC_GRACE",
    "MVAULT_DEBUG",
    "MVAULT_NO_PROGRESS",
    "MVAULT_TRUST",
)


@pytest.fixture(autouse=True)
def mvault_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point every MVAULT_* setting at a temporary home for the test's duration."""
    for name in _VARS:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "mvault-home"
    monkeypatch.setenv("MVAULT_HOME", str(home))
    monkeypatch.setenv("MVAULT_USER", "tester")
    config.reload()
    yield home
    config.reload()
