"""Least privilege on real servers: a reader role reads and cannot write, a publisher cannot drop history.

Each test creates real login roles (PostgreSQL) or users (MariaDB), grants them
with ``mvault db grant-* --apply`` and connects as them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from modelvault import Vault, config
from modelvault.cli.main import main
from modelvault.errors import RegistryAccessError, RegistryError
from modelvault.registry.db import normalize_url
from modelvault.registry.schema import AliasHistory, Event, Version
from tests.registry.conftest import create_database, drop_database, server_url

SERVER_KINDS = [
    pytest.param("postgresql", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mysql),
]


@pytest.fixture(params=SERVER_KINDS)
def registry_db(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    kind = str(request.param)
    url = create_database(kind)
    from modelvault.registry import upgrade

    upgrade(url)
    try:
        yield kind, url
    finally:
        drop_database(url)


def _make_user(kind: str, admin_url: str) -> tuple[str, str, object]:
    """A login role/user with no privileges; returns (role for grant, its URL, a dropper)."""
    name = f"mv_{secrets.token_hex(4)}"
    pw = secrets.token_hex(8)
    admin = create_engine(normalize_url(server_url(kind)), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if kind == "postgresql":
            conn.execute(text(f"CREATE ROLE {name} LOGIN PASSWORD '{pw}'"))
        else:
            conn.execute(text(f"CREATE USER '{name}'@'%' IDENTIFIED BY '{pw}'"))
    url = make_url(admin_url).set(username=name, password=pw).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as conn:
            if kind == "postgresql":
                # Its grants live in the test database: revoke them there first.
                db = create_engine(normalize_url(admin_url), isolation_level="AUTOCOMMIT")
                with db.connect() as c:
                    c.execute(text(f"DROP OWNED BY {name}"))
                db.dispose()
                conn.execute(text(f"DROP ROLE IF EXISTS {name}"))
            else:
                conn.execute(text(f"DROP USER IF EXISTS '{name}'@'%'"))
        admin.dispose()

    return name, url, drop


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _count(url: str, model: type) -> int:
    engine = create_engine(normalize_url(url))
    with engine.connect() as conn:
        n = int(conn.execute(select(func.count()).select_from(model)).scalar_one())
    engine.dispose()
    return n


def test_sql_is_emitted_without_applying(registry_db, capsys, monkeypatch):
    _kind, url = registry_db
    monkeypatch.setenv("MVAULT_REGISTRY", url)
    config.reload()
    code, out, _ = _cli(capsys, "db", "grant-reader", "serving")
    assert code == 0
    assert "GRANT SELECT ON" in out and "INSERT" not in out and "DELETE" not in out
    code, out, _ = _cli(capsys, "db", "grant-publisher", "ci")
    assert "INSERT" in out and "UPDATE, DELETE ON" in out
    assert "events" not in out.split("UPDATE, DELETE")[1]  # history is never writable
    code, _, err = _cli(capsys, "db", "grant-reader", "bad;name")
    assert code == 2 and err.count("mvault: error:") == 1


def test_reader_reads_and_loads_but_cannot_push(registry_db, tmp_path: Path, capsys, monkeypatch):
    kind, url = registry_db
    store = f"file://{tmp_path / 'store'}"
    model = tmp_path / "m.bin"
    model.write_bytes(b"weights" * 1000)
    with Vault(registry=url, store=store) as owner:
        owner.push(model, "enc", "1.0.0", aliases=["prod"])
    name, reader_url, drop = _make_user(kind, url)
    try:
        monkeypatch.setenv("MVAULT_REGISTRY", url)
        config.reload()
        code, _, err = _cli(capsys, "db", "grant-reader", name, "--apply")
        assert code == 0, err
        events, versions = _count(url, Event), _count(url, Version)

        with Vault(registry=reader_url, store=store) as reader:
            assert reader.resolve("enc@prod").version == "1.0.0"
            assert [m.name for m in reader.list()] == ["enc"]
            assert Path(reader.load("enc@prod")).read_bytes() == model.read_bytes()
            reader.pull("enc@prod", tmp_path / "pulled.bin")
            with pytest.raises(RegistryAccessError, match="refused"):
                reader.push(model, "enc", "2.0.0")
        # Reads wrote nothing (no event for a resolve or a load), the push wrote nothing.
        assert (_count(url, Event), _count(url, Version)) == (events, versions)

        monkeypatch.setenv("MVAULT_REGISTRY", reader_url)
        monkeypatch.setenv("MVAULT_STORE", store)
        config.reload()
        code, _, err = _cli(capsys, "push", "enc:3.0.0", str(model))
        assert code == 6 and err.count("mvault: error:") == 1 and "refused" in err
        code, _, err = _cli(capsys, "alias", "set", "enc", "staging", "1.0.0")
        assert code == 6 and "refused" in err
        assert (_count(url, Event), _count(url, Version)) == (events, versions)
    finally:
        drop()


def test_publisher_pushes_but_cannot_drop_history(registry_db, tmp_path: Path, capsys, monkeypatch):
    kind, url = registry_db
    store = f"file://{tmp_path / 'store'}"
    model = tmp_path / "m.bin"
    model.write_bytes(b"weights" * 1000)
    name, pub_url, drop = _make_user(kind, url)
    try:
        monkeypatch.setenv("MVAULT_REGISTRY", url)
        config.reload()
        assert _cli(capsys, "db", "grant-publisher", name, "--apply")[0] == 0
        with Vault(registry=pub_url, store=store) as pub:
            pub.push(model, "enc", "1.0.0", aliases=["prod"])
            model.write_bytes(b"other" * 1000)
            pub.push(model, "enc", "1.1.0")
            pub.set_alias("enc", "prod", "1.1.0")  # moving a pointer is publishing
            pub.remove_alias("enc", "prod")
            with pytest.raises(RegistryError, match="refused"):
                pub.delete("enc", "1.0.0")
        assert _count(url, Version) == 2
        history, events = _count(url, AliasHistory), _count(url, Event)
        assert history == 3 and events >= 4
        engine = create_engine(normalize_url(pub_url))
        for stmt in (
            "DELETE FROM events",
            "UPDATE events SET kind = 'x'",
            "DELETE FROM alias_history",
            "UPDATE alias_history SET alias = 'x'",
        ):
            with (
                pytest.raises(Exception, match=r"(?i)permission denied|command denied"),
                engine.begin() as conn,
            ):
                conn.execute(text(stmt))
        engine.dispose()
        assert (_count(url, AliasHistory), _count(url, Event)) == (history, events)
    finally:
        drop()
