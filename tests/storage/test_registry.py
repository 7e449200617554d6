from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modelvault.errors import InvalidArgumentError, PluginNotFoundError
from modelvault.storage import open_store
from modelvault.storage.local import LocalStore
from modelvault.storage.memory import MemoryStore

SRC = str(Path(__file__).parents[2] / "src")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
        timeout=60,
    )


def test_open_local(tmp_path: Path) -> None:
    a = open_store(f"file://{tmp_path}/s")
    assert isinstance(a, LocalStore)
    assert a.root == tmp_path / "s"
    b = open_store(str(tmp_path / "plain"))
    assert isinstance(b, LocalStore)
    assert b.url == f"file://{tmp_path / 'plain'}"


def test_open_memory() -> None:
    assert isinstance(open_store("memory://reg"), MemoryStore)
    assert open_store("memory://reg") is open_store("memory://reg")


@pytest.mark.parametrize(
    ("url", "error", "match"),
    [
        ("ftp://host/x", PluginNotFoundError, "no blob store handles ftp://"),
        ("", InvalidArgumentError, "non-empty"),
        ("   ", InvalidArgumentError, "non-empty"),
        ("file://otherhost/x", InvalidArgumentError, "not a local store URL"),
        ("file://", InvalidArgumentError, "names no directory"),
    ],
)
def test_bad_urls(url: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        open_store(url)


def test_import_does_not_load_boto3() -> None:
    done = run_python(
        """
        import sys
        import modelvault, modelvault.storage
        from modelvault.storage import open_store
        open_store("memory://x")
        print("boto3" in sys.modules, "botocore" in sys.modules)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def test_missing_boto3_says_which_extra() -> None:
    done = run_python(
        """
        import sys
        sys.modules["boto3"] = None  # as if it were not installed
        from modelvault.errors import MissingDependencyError
        from modelvault.storage import open_store
        try:
            open_store("s3://bucket/prefix")
        except MissingDependencyError as exc:
            print(exc.package, exc.extra, "|", exc, "|", exc.hint)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "boto3 s3 | the s3:// store needs boto3, which is not installed | run: pip install 'modelvault[s3]'"
    )


def test_entry_point_store(tmp_path: Path) -> None:
    """A third-party store registered through the modelvault.stores entry-point group."""
    (tmp_path / "thirdparty_store.py").write_text(
        "from modelvault.storage.memory import MemoryStore\n"
        "class ThirdParty(MemoryStore):\n"
        "    @classmethod\n"
        "    def from_url(cls, url):\n"
        "        s = cls('tp'); s.url = url; return s\n"
    )
    dist = tmp_path / "thirdparty_store-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-store\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[modelvault.stores]\ntp = thirdparty_store:ThirdParty\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        store = open_store("tp://somewhere")
        assert type(store).__name__ == "ThirdParty"
        assert store.url == "tp://somewhere"
        with pytest.raises(PluginNotFoundError, match="tp"):
            open_store("nope://x")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("thirdparty_store", None)


@pytest.mark.s3
def test_open_s3(s3_env: object) -> None:
    from modelvault.storage.s3 import S3Store

    store = open_store("s3://mvault-tests/reg")
    assert isinstance(store, S3Store)
    assert store.prefix == "reg/"
    store.close()
