"""Alembic revisions vs the ORM, schema-version checks, auto-upgrade, URLs."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from modelvault import config
from modelvault.errors import (
    ConfigError,
    MissingDependencyError,
    RegistryNotFoundError,
    RegistryUnavailableError,
    SchemaAheadError,
    SchemaBehindError,
)
from modelvault.registry import Registry, current, upgrade
from modelvault.registry import db as regdb
from modelvault.registry.schema import Base

from .helpers import variant


def test_orm_and_migrations_agree(db_url: str) -> None:
    """autogenerate finds no difference between the migrated database and the ORM."""
    engine = regdb.connect(db_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "target_metadata": Base.metadata}
        )
        assert compare_metadata(ctx, Base.metadata) == []
    engine.dispose()


def test_current_and_upgrade(fresh_db: str, db_kind: str) -> None:
    if db_kind == "sqlite":
        path = Path(fresh_db.removeprefix("sqlite:///"))
        with pytest.raises(RegistryNotFoundError, match="no registry at"):
            current(fresh_db)
        assert not path.exists()  # current() only reads: a missing file stays missing
        path.touch()
    before = current(fresh_db)
    assert before["status"] == "empty"
    assert before["current"] is None
    head = before["head"]
    assert upgrade(fresh_db) == head
    after = current(fresh_db)
    assert after["status"] == "up to date"
    assert after["current"] == head
    assert upgrade(fresh_db) == head  # idempotent


def test_downgrade_and_upgrade_round_trip(fresh_db: str) -> None:
    upgrade(fresh_db)
    engine = regdb.connect(fresh_db)
    with engine.connect() as conn, conn.begin():
        command.downgrade(regdb._alembic_config(conn), "base")
    with engine.connect() as conn:
        assert not inspect(conn).has_table("versions")
    engine.dispose()
    upgrade(fresh_db)
    with Registry(fresh_db) as reg:
        reg.register_version("m", "1.0.0", [variant("a")])


def test_schema_behind_names_the_command(fresh_db: str, db_kind: str) -> None:
    if db_kind == "sqlite":
        Path(fresh_db.removeprefix("sqlite:///")).touch()  # exists, but has no tables
    with pytest.raises(SchemaBehindError, match="run: mvault db upgrade") as err:
        Registry(fresh_db)
    assert err.value.hint == "run: mvault db upgrade"
    with Registry(fresh_db, auto_upgrade=True) as reg:
        assert reg.resolve  # opened, upgraded
    assert current(fresh_db)["status"] == "up to date"


def test_schema_ahead_is_refused(db_url: str) -> None:
    engine = regdb.connect(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    engine.dispose()
    try:
        msg = "upgraded by a newer modelvault \\(revision 9999_future\\); upgrade modelvault"
        with pytest.raises(SchemaAheadError, match=msg):
            Registry(db_url)
        with pytest.raises(SchemaAheadError):
            Registry(db_url, auto_upgrade=True)
        with pytest.raises(SchemaAheadError):
            upgrade(db_url)
        assert current(db_url)["status"] == "ahead"
    finally:
        engine = regdb.connect(db_url)
        with engine.begin() as conn:
            conn.execute(
                text(f"UPDATE alembic_version SET version_num = '{regdb.head_revision()}'")
            )
        engine.dispose()


def test_embedded_default_upgrades_itself(tmp_path: Path) -> None:
    home = config.settings().home
    assert config.settings().is_embedded_registry
    with Registry() as reg:
        reg.register_version("m", "1.0.0", [variant("a")])
    assert (home / "registry.db").exists()
    with Registry() as reg:
        assert reg.resolve("m").version == "1.0.0"


def test_new_sqlite_file_upgrades_itself(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'dir' / 'new.db'}"
    with Registry(url) as reg:
        reg.create_model("m")
    assert current(url)["status"] == "up to date"


def test_sqlite_pragmas(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    with Registry(url) as reg, reg.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == regdb.SQLITE_BUSY_MS


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg"),
        ("postgres://u@h/db", "postgresql+psycopg"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg"),
        ("mysql://u@h/db", "mysql+pymysql"),
        ("mariadb://u@h/db", "mysql+pymysql"),
        ("sqlite:///x.db", "sqlite"),
    ],
)
def test_url_driver_mapping(url: str, driver: str) -> None:
    assert regdb.normalize_url(url).drivername == driver


@pytest.mark.parametrize("url", ["", "   ", "not a url", "oracle://u@h/db", "http://example.com"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        regdb.normalize_url(url)


def test_missing_driver() -> None:
    with pytest.raises(MissingDependencyError) as err:
        regdb.connect("mysql+mysqldb://u@h/db")
    assert err.value.extra == "mysql"
    assert "pip install 'modelvault[mysql]'" in (err.value.hint or "")
    with pytest.raises(MissingDependencyError) as err2:
        regdb.connect("postgresql+psycopg2://u@h/db")
    assert err2.value.extra == "postgres"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://user:s3cretpw@127.0.0.1:1/db",
        "mysql://user:s3cretpw@127.0.0.1:1/db",
    ],
)
def test_unreachable_server(url: str) -> None:
    with pytest.raises(RegistryUnavailableError) as err:
        Registry(url)
    assert "127.0.0.1:1" in str(err.value)
    assert "s3cretpw" not in str(err.value)
    assert "s3cretpw" not in repr(err.value.args)


def test_the_static_head_is_alembics_head() -> None:
    # Opening an up-to-date registry compares alembic_version with this constant
    # instead of importing Alembic; a new migration must move it.
    assert regdb.head_revision() == regdb.HEAD_REVISION
