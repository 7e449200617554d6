from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from modelvault.storage.s3 import S3Store
from tests.storage.conformance import BlobStoreConformance

pytestmark = pytest.mark.s3


class TestS3Store(BlobStoreConformance):
    @pytest.fixture
    def store(self, make_s3_store: Callable[..., Any]) -> S3Store:
        store: S3Store = make_s3_store()
        return store
