"""Fixtures for the storage tests: a SeaweedFS S3 server per session, S3 stores on it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import modelvault.config
from tests.storage.seaweed import SeaweedError, SeaweedS3

BUCKET = "mvault-tests"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MVAULT_HOME", str(tmp_path / "home"))
    modelvault.config.reload()
    yield
    modelvault.config.reload()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS server for the session, with the test bucket created."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    try:
        server.start()
        server.create_bucket(BUCKET)
    except SeaweedError as exc:
        server.stop()
        pytest.fail(f"SeaweedFS is needed for the S3 tests and could not start: {exc}")
    yield server
    server.stop()


@pytest.fixture
def s3_env(seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:
    """Point the standard AWS variables at the session server."""
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    modelvault.config.reload()
    return seaweed


@pytest.fixture
def make_s3_store(s3_env: SeaweedS3) -> Iterator[Callable[..., Any]]:
    """Build S3Stores on a fresh prefix of the test bucket (small parts, so multipart is exercised)."""
    from modelvault.storage.s3 import S3Store

    made: list[S3Store] = []

    def make(**kwargs: Any) -> S3Store:
        kwargs.setdefault("part_size", 5 * 1024 * 1024)
        kwargs.setdefault("concurrency", 4)
        prefix = kwargs.pop("prefix", f"t-{uuid.uuid4().hex[:10]}")
        store = S3Store(kwargs.pop("bucket", BUCKET), prefix, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
