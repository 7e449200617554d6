"""Fixtures: a real registry, a vault with a small model in it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelvault import Vault
from tests.cli.conftest import mvault  # noqa: F401  (re-exported fixture)

from .registry import RunningRegistry, run_registry


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    with run_registry(tmp_path / "reg") as r:
        yield r


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    with run_registry(tmp_path / "reg-auth", user="alice", password="s3cret-pass") as r:
        yield r


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    v = Vault(registry=f"sqlite:///{tmp_path / 'a.db'}", store=f"file://{tmp_path / 'store-a'}")
    yield v
    v.close()


@pytest.fixture
def other_vault(tmp_path: Path) -> Iterator[Vault]:
    v = Vault(registry=f"sqlite:///{tmp_path / 'b.db'}", store=f"file://{tmp_path / 'store-b'}")
    yield v
    v.close()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A small model as files: weights of a few MiB, a config."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "weights.bin").write_bytes(bytes(range(256)) * (3 * 4096 + 7))
    (d / "config.json").write_text('{"layers": 2}\n')
    return d
