from __future__ import annotations

import pytest

from modelvault.storage.local import LocalStore
from tests.storage.conformance import BlobStoreConformance


class TestLocalStore(BlobStoreConformance):
    @pytest.fixture
    def store(self, tmp_path_factory: pytest.TempPathFactory) -> LocalStore:
        return LocalStore(tmp_path_factory.mktemp("store"))
