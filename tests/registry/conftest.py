"""Fixtures for registry tests: every test runs on SQLite, PostgreSQL and MariaDB.

Each test session creates its own databases (``mv_test_<random>``) on the
servers and drops them at the end; between tests every table is emptied.
A server that cannot be reached FAILS the tests that need it, naming the
service: CI must provide PostgreSQL and MariaDB (``.ci/run`` starts them).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import create_engine, delete, text
from sqlalchemy.engine import make_url

from modelvault import config
from modelvault.registry import Registry, upgrade
from modelvault.registry import lite as lite_module
from modelvault.registry.db import normalize_url
from modelvault.registry.lite import LiteRegistry
from modelvault.registry.schema import Base

SERVERS = {
    "postgresql": (
        "MVAULT_TEST_POSTGRES_URL",
        "postgresql://postgres@127.0.0.1:5432/postgres",
        "PostgreSQL",
    ),
    "mariadb": ("MVAULT_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/mysql", "MariaDB/MySQL"),
}
KINDS = [
    pytest.param("sqlite", id="sqlite"),
    # The same SQLite file through registry/lite.py (the standard library's sqlite3, the
    # full Registry for what it does not do): every test that uses `reg` runs on it too.
    pytest.param("lite", id="lite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mysql),
]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MVAULT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MVAULT_REGISTRY", raising=False)
    monkeypatch.setenv("MVAULT_USER", "tester")
    config.reload()
    yield
    config.reload()


def server_url(kind: str) -> str:
    env, default, _ = SERVERS[kind]
    return os.environ.get(env) or default


def create_database(kind: str) -> str:
    """Create ``mv_test_<random>`` on the server; return its URL. Fails (never skips) if the server is down."""
    env, _, label = SERVERS[kind]
    admin = normalize_url(server_url(kind))
    name = f"mv_test_{secrets.token_hex(6)}"
    try:
        engine = create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        engine.dispose()
    except Exception as exc:
        pytest.fail(
            f"{label} is not reachable at {admin.host}:{admin.port} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0]}); the registry tests need it: start the service "
            f"(.ci/run does) or point {env} at one",
            pytrace=False,
        )
    return admin.set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    parsed = make_url(url)
    kind = "postgresql" if parsed.get_backend_name() == "postgresql" else "mariadb"
    admin = normalize_url(server_url(kind))
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        force = " WITH (FORCE)" if kind == "postgresql" else ""
        conn.execute(text(f"DROP DATABASE IF EXISTS {parsed.database}{force}"))
    engine.dispose()


@pytest.fixture(scope="session")
def server_databases() -> Iterator[dict[str, str]]:
    """One upgraded database per server kind for the whole session, created on first use."""
    made: dict[str, str] = {}
    yield made
    for url in made.values():
        drop_database(url)


@pytest.fixture(params=KINDS)
def db_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The lite kind is for tests of the registry's calls (`reg`); a test that opens its
    own Registry on the URL would only run the sqlite kind again, and one that hooks into
    the SQLAlchemy engine (`sa_engine`) tests what the lite path does not use."""
    keep = [
        item
        for item in items
        if "[lite" not in item.nodeid
        or not item.nodeid.startswith("tests/registry/")
        or ("reg" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("sa_engine"))
    ]
    items[:] = keep


@pytest.fixture
def db_url(db_kind: str, server_databases: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """An empty, upgraded registry database of the parametrized kind."""
    if db_kind in ("sqlite", "lite"):
        url = f"sqlite:///{tmp_path / 'registry.db'}"
        upgrade(url)
        yield url
        return
    if db_kind not in server_databases:
        url = create_database(db_kind)
        upgrade(url)
        server_databases[db_kind] = url
    url = server_databases[db_kind]
    yield url
    engine = create_engine(normalize_url(url))
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(delete(table))
    engine.dispose()


@pytest.fixture
def reg(db_url: str, db_kind: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    if db_kind == "lite":
        # an SQLite error in the lite path fails the test rather than being answered by
        # the full registry, which would hide it
        monkeypatch.setattr(lite_module, "STRICT", True)
        lite = LiteRegistry.open(db_url)
        assert lite is not None, "the lite registry refused an upgraded SQLite file"
        r = cast(Registry, lite)
    else:
        r = Registry(db_url)
    yield r
    r.close()


@pytest.fixture
def fresh_db(db_kind: str, tmp_path: Path) -> Iterator[str]:
    """A brand-new, EMPTY database (no tables) of the parametrized kind, dropped afterwards."""
    if db_kind in ("sqlite", "lite"):
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    url = create_database(db_kind)
    try:
        yield url
    finally:
        drop_database(url)
