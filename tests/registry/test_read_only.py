"""``Registry(read_only=True)``: lookups only, on every database; never creates or migrates.

The CLI's read commands open the registry this way (tests/cli/test_read_only_home.py
runs them on a home the user cannot write).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from modelvault.errors import RegistryNotFoundError, RegistryReadOnlyError, SchemaBehindError
from modelvault.registry import Registry, current

from .helpers import variant


def test_lookups_work_and_changes_are_refused(reg: Registry, db_url: str) -> None:
    reg.register_version("m", "1.0.0", [variant("a")])
    reg.set_alias("m", "prod", "1.0.0")
    with Registry(db_url, read_only=True) as ro:
        assert ro.read_only and ro.read_only_reason == "opened read-only"
        assert ro.resolve("m@prod").version == "1.0.0"
        assert [m.name for m in ro.list_models().items] == ["m"]
        assert ro.events("m")
        for change in (
            lambda: ro.set_alias("m", "prod", "1.0.0"),
            lambda: ro.register_version("m", "2.0.0", [variant("b")]),
            lambda: ro.set_labels("m", "1.0.0", {"a": "b"}),
            lambda: ro.delete_version("m", "1.0.0", force=True),
        ):
            with pytest.raises(RegistryReadOnlyError, match=r"read-only .*nothing was written"):
                change()
    assert reg.get_model("m").version_count == 1
    assert not reg.read_only


def test_a_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "registry.db"
    with pytest.raises(RegistryNotFoundError, match="nothing pushed yet, or a mistyped path"):
        Registry(f"sqlite:///{path}", read_only=True)
    with pytest.raises(RegistryNotFoundError):
        current(f"sqlite:///{path}")
    assert not path.exists() and not path.parent.exists()
    with Registry(f"sqlite:///{path}") as reg:  # a writer creates it
        reg.register_version("m", "1.0.0", [variant("a")])
    with Registry(f"sqlite:///{path}", read_only=True) as ro:
        assert ro.resolve("m").version == "1.0.0"
    # Only SQLite's own files: a reader in a writable directory may leave its -wal and -shm.
    assert {p.name for p in path.parent.iterdir()} <= {
        "registry.db",
        "registry.db-wal",
        "registry.db-shm",
    }


def test_read_only_never_migrates(fresh_db: str, db_kind: str) -> None:
    if db_kind == "sqlite":
        Path(fresh_db.removeprefix("sqlite:///")).touch()  # exists, but has no tables
    with pytest.raises(SchemaBehindError, match="run: mvault db upgrade"):
        Registry(fresh_db, read_only=True, auto_upgrade=True)
    assert current(fresh_db)["status"] == "empty"


def test_a_directory_is_not_a_registry(tmp_path: Path) -> None:
    from modelvault.errors import ConfigError

    with pytest.raises(ConfigError, match="is a directory; name the SQLite file in it"):
        Registry(f"sqlite:///{tmp_path}", read_only=True)
