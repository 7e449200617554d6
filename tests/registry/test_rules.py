"""Schema drift refused on open, model names unique ignoring case, labels of a re-push kept."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import exc as sa_exc
from sqlalchemy import insert, select, text

from modelvault import config
from modelvault.cli.main import main
from modelvault.errors import (
    ConflictError,
    ModelExistsError,
    ModelNotFoundError,
    SchemaDriftError,
)
from modelvault.registry import Registry, current, upgrade
from modelvault.registry import db as regdb
from modelvault.registry.schema import Model
from modelvault.storage.local import LocalStore
from modelvault.vault import Vault
from tests.cli.conftest import Result

from .helpers import variant

CLI = Callable[..., Result]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> CLI:
    """``mvault`` in-process: its exit code and what it printed."""

    def run(*argv: str) -> Result:
        capsys.readouterr()
        code = main(list(argv))
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return run


@pytest.fixture
def cli_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str], None]:
    """Point ``mvault`` (in-process) at a registry URL and a local store."""

    def point(url: str) -> None:
        monkeypatch.setenv("MVAULT_REGISTRY", url)
        monkeypatch.setenv("MVAULT_STORE", f"file://{tmp_path / 'store'}")
        config.reload()

    return point


def run_sql(url: str, *statements: str) -> None:
    engine = regdb.connect(url)
    with engine.begin() as conn:
        for s in statements:
            conn.execute(text(s))
    engine.dispose()


# --- schema drift --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("ALTER TABLE versions DROP COLUMN description", "column versions.description is missing"),
        ("DROP TABLE labels", "table labels is missing"),
    ],
)
def test_drifted_schema_is_refused_with_what_differs(
    fresh_db: str, damage: str, says: str, cli: CLI, cli_on: Callable[[str], None]
) -> None:
    upgrade(fresh_db)
    run_sql(fresh_db, damage)
    with pytest.raises(SchemaDriftError, match="does not match its schema revision 0002") as err:
        Registry(fresh_db)
    assert says in str(err.value)
    state = current(fresh_db)
    assert state["status"] == "drifted"
    assert says in state["drift"]
    cli_on(fresh_db)
    r = cli("db", "current")
    assert r.code == 6
    assert "drifted" in r.out and says in r.out
    r = cli("ls")
    assert r.code == 6
    assert says in r.err
    assert len(r.err.strip().splitlines()) <= 2  # one line and its hint, no traceback


def test_intact_schema_reports_no_drift(
    db_url: str, cli: CLI, cli_on: Callable[[str], None]
) -> None:
    assert current(db_url)["drift"] == []
    cli_on(db_url)
    r = cli("db", "current", "--json")
    assert r.code == 0
    assert json.loads(r.out)["status"] == "up to date"


# --- names unique ignoring case -------------------------------------------------------


def test_names_are_one_model_ignoring_case(reg: Registry) -> None:
    reg.register_version("base", "1.0.0", [variant("a")])
    for other in ("Base", "BASE", "bAsE"):
        with pytest.raises(ModelExistsError, match="model 'base' already exists") as err:
            reg.register_version(other, "2.0.0", [variant("b")])
        assert err.value.hint == "push to base:VERSION"
        with pytest.raises(ModelNotFoundError, match="did you mean 'base'"):
            reg.resolve(other)
    assert [m.name for m in reg.list_models().items] == ["base"]
    assert [v.version for v in reg.list_versions("base").items] == ["1.0.0"]


def test_database_refuses_a_second_spelling_too(reg: Registry) -> None:
    """The unique key holds under the API: the same insert by hand fails on every database."""
    reg.create_model("base")
    now = dt.datetime.now(dt.timezone.utc)
    with reg.engine.begin() as conn, pytest.raises(sa_exc.IntegrityError):
        conn.execute(insert(Model).values(name="BASE", created_at=now, created_by="t"))


def test_upgrade_refuses_existing_names_that_differ_in_case(fresh_db: str) -> None:
    engine = regdb.connect(fresh_db)
    with engine.connect() as conn, conn.begin():
        command.upgrade(regdb._alembic_config(conn), "0001")
    engine.dispose()
    names = ["base", "Base", "BASE", "other", "Other", "alone"]
    run_sql(
        fresh_db,
        *(
            f"INSERT INTO models (name, created_at, created_by) "
            f"VALUES ('{n}', '2026-01-01 00:00:00', 't')"
            for n in names
        ),
    )
    with pytest.raises(ConflictError) as err:
        upgrade(fresh_db)
    msg = str(err.value)
    assert "2 group(s)" in msg
    assert "BASE = Base = base; Other = other" in msg
    assert "alone" not in msg
    assert "nothing was changed" in msg
    assert current(fresh_db)["current"] == "0001"
    run_sql(
        fresh_db,
        "UPDATE models SET name = 'base-2' WHERE name = 'Base'",
        "UPDATE models SET name = 'base-3' WHERE name = 'BASE'",
        "UPDATE models SET name = 'other-2' WHERE name = 'Other'",
    )
    assert upgrade(fresh_db) == "0002"
    with Registry(fresh_db) as reg:
        with reg.engine.connect() as conn:
            keys = dict(conn.execute(select(Model.name, Model.name_key)).all())
        assert keys["base-2"] == "base-2" and keys["alone"] == "alone"
        with pytest.raises(ModelExistsError):
            reg.create_model("ALONE")


# --- labels of a re-push -----------------------------------------------------------------


def test_reregistering_identical_content_applies_new_labels(reg: Registry) -> None:
    reg.register_version("m", "1.0.0", [variant("a")], labels={"stage": "dev"})
    info, created = reg.register_version(
        "m", "1.0.0", [variant("a")], labels={"stage": "qa", "owner": "ml"}
    )
    assert not created
    assert info.labels == {"owner": "ml", "stage": "qa"}
    assert reg.get_version("m", "1.0.0").labels == {"owner": "ml", "stage": "qa"}
    assert reg.events("m", limit=1)[0].kind == "label.set"
    # The same labels again: nothing to do, no event.
    reg.register_version("m", "1.0.0", [variant("a")], labels={"stage": "qa"})
    assert reg.events("m", limit=1)[0].kind == "label.set"
    assert len([e for e in reg.events("m") if e.kind == "label.set"]) == 1


def test_repush_with_new_labels_through_vault_and_cli(
    db_url: str, tmp_path: Path, cli: CLI, cli_on: Callable[[str], None]
) -> None:
    src = tmp_path / "model"
    src.mkdir()
    (src / "w.bin").write_bytes(b"weights" * 100)
    with Vault(db_url, LocalStore(tmp_path / "store")) as v:
        first = v.push(src, "m", "1.0.0", format="files", labels={"stage": "dev"})
        again = v.push(src, "m", "1.0.0", format="files", labels={"stage": "qa"})
        assert first.created and not again.created
        assert again.labels == {"stage": "qa"}
        assert v.resolve("m@1.0.0").labels == {"stage": "qa"}
        # As another variant: the labels land on the version too.
        (src / "extra.txt").write_text("more")
        v.push(src, "m", "1.0.0", format="files", variant=True, labels={"team": "vision"})
        assert v.resolve("m@1.0.0").labels == {"stage": "qa", "team": "vision"}
    cli_on(db_url)
    r = cli("push", "m:1.0.0", str(src), "--format", "files", "--label", "owner=ml")
    assert r.code == 0, r.err
    assert "unchanged: m:1.0.0" in r.out
    assert "labels: owner=ml" in r.out
    shown = json.loads(cli("show", "m@1.0.0", "--json").out)
    assert shown["labels"] == {"owner": "ml", "stage": "qa", "team": "vision"}
