"""A disk that fills up during a write: StorageFullError, and no partial file left.

The small disk is a real 8 MiB tmpfs mounted for the test (needs root, as in
CI's container). A second check, independent of mounting, runs a store in a
subprocess whose file-size limit (RLIMIT_FSIZE) is below the blob's size.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelvault.errors import StorageFullError
from modelvault.storage import BlobCache
from modelvault.storage.local import LocalStore
from modelvault.storage.memory import MemoryStore
from tests.storage.conformance import blob

BIG = 12 << 20  # larger than the 8 MiB disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.fail(
            f"cannot mount an 8 MiB tmpfs for the disk-full tests (needs root): {done.stderr.strip()}"
        )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_local_put_fills_disk(small_disk: Path, tmp_path: Path) -> None:
    store = LocalStore(small_disk / "store")
    d, data = blob(BIG)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    with pytest.raises(StorageFullError, match="no space left") as err:
        store.put_file(d, src)
    assert str(small_disk) in str(err.value)
    assert err.value.hint
    assert "free some space" in err.value.hint
    assert files_under(small_disk) == []
    assert not store.exists(d)
    small_d, small_data = blob(1000)  # the store still works once there is room
    assert store.put_bytes(small_d, small_data) is True


def test_local_get_file_fills_disk(small_disk: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    d, data = blob(BIG)
    store.put_bytes(d, data)
    with pytest.raises(StorageFullError):
        store.get_file(d, small_disk / "out.bin")
    assert files_under(small_disk) == []


def test_cache_fill_fills_disk(small_disk: Path) -> None:
    remote = MemoryStore()
    d, data = blob(BIG)
    remote.put_bytes(d, data)
    cache = BlobCache(small_disk / "cache", 1 << 30)
    with pytest.raises(StorageFullError):
        cache.fetch(remote, d)
    assert cache.ls() == []
    assert [p for p in files_under(small_disk) if p.suffix != ".lock"] == []


@pytest.mark.s3
def test_s3_pull_into_full_disk(small_disk: Path, make_s3_store: Callable[..., Any]) -> None:
    store = make_s3_store()
    d, data = blob(BIG)
    store.put_bytes(d, data)
    with pytest.raises(StorageFullError):
        store.get_file(d, small_disk / "out.bin")
    cache = BlobCache(small_disk / "cache", 1 << 30)
    with pytest.raises(StorageFullError):
        cache.fetch(store, d)
    assert cache.ls() == []
    assert [p for p in files_under(small_disk) if p.suffix != ".lock"] == []


def test_file_size_limit_in_subprocess(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os, resource, signal, sys
        from pathlib import Path
        from modelvault.errors import StorageFullError
        from modelvault.digest import digest_bytes
        from modelvault.storage.local import LocalStore
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))
        root = Path(sys.argv[1])
        data = os.urandom(8 << 20)
        try:
            LocalStore(root).put_bytes(digest_bytes(data), data)
        except StorageFullError as exc:
            print("FULL", exc)
        leftovers = [p for p in root.rglob("*") if p.is_file()]
        print("LEFT", len(leftovers))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "store")],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(Path(__file__).parents[2] / "src"), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "FULL no space left" in done.stdout
    assert "LEFT 0" in done.stdout
