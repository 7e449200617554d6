from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def container_dir(tmp_path: Path) -> Path:
    return tmp_path / "container"
