from __future__ import annotations

import pytest

from modelvault.storage.memory import MemoryStore
from tests.storage.conformance import BlobStoreConformance


class TestMemoryStore(BlobStoreConformance):
    @pytest.fixture
    def store(self) -> MemoryStore:
        return MemoryStore()


def test_named_memory_stores_are_shared() -> None:
    a = MemoryStore.from_url("memory://shared-test")
    assert MemoryStore.from_url("memory://shared-test/") is a
    assert MemoryStore.from_url("memory://other") is not a
