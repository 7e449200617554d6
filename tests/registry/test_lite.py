"""registry/lite.py against the SQLAlchemy registry it stands in for.

The whole registry suite runs on the lite path too (the ``lite`` kind in
conftest.py); these tests check what that suite cannot see: that both paths
write the same rows, that the lite path opens only what it can read with
certainty and hands everything else to the full registry, and that the two
resolve every spec alike.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelvault import Vault
from modelvault.errors import (
    AliasNotFoundError,
    InvalidArgumentError,
    LeaseLapsedError,
    ModelVaultError,
    RegistryReadOnlyError,
    SchemaAheadError,
    SchemaDriftError,
    VariantExistsError,
    VersionExistsError,
)
from modelvault.registry import Registry, upgrade
from modelvault.registry import _sqlite as regsqlite
from modelvault.registry import db as regdb
from modelvault.registry.lite import LiteRegistry
from modelvault.registry.schema import Base

from .helpers import digest, variant

_TS = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")


def _new(tmp_path: Path, name: str) -> str:
    url = f"sqlite:///{tmp_path / name}"
    upgrade(url)
    return url


def _lite(url: str, **kw: Any) -> LiteRegistry:
    lite = LiteRegistry.open(url, **kw)
    assert lite is not None
    return lite


def test_the_schema_it_checks_is_the_orm_schema() -> None:
    assert regdb.head_revision() == regsqlite.HEAD_REVISION
    orm = {t.name: tuple(c.name for c in t.columns) for t in Base.metadata.sorted_tables}
    assert {k: sorted(v) for k, v in regsqlite.TABLE_COLUMNS.items()} == {
        k: sorted(v) for k, v in orm.items()
    }


# --- the same calls write the same rows --------------------------------------------------


def _script(reg: Any) -> list[Any]:
    """Every write the lite registry makes, with the answers and errors it gives."""
    out: list[Any] = []

    def note(fn: Any, *a: Any, **kw: Any) -> None:
        try:
            out.append(fn(*a, **kw))
        except ModelVaultError as exc:
            out.append((type(exc).__name__, str(exc), getattr(exc, "hint", None)))

    lease, doomed = reg.take_lease([digest("manifest:a"), digest("weights:w")], ttl_seconds=600)
    out.append(doomed)
    note(
        reg.register_version,
        "m",
        "1.0.0",
        [variant("a")],
        aliases=["prod"],
        labels={"team": "vision", "stage": "dev"},
        description="first",
        lease=lease,
    )
    note(reg.register_version, "m", "1.0.0", [variant("a")], labels={"stage": "prod"})
    note(reg.register_version, "m", "1.0.0", [variant("b")])
    note(reg.register_version, "M", "2.0.0", [variant("c")])
    note(reg.register_version, "m", "2.0.0-rc.1+build.7", [variant("c", shared="x")])
    note(reg.register_version, "m", "1.2.0", [variant("d")], aliases=["staging", "prod"])
    note(reg.add_variant, "m", "1.2.0", variant("e", kind="tensorrt", fmt="torch_tensorrt"))
    note(reg.add_variant, "m", "1.2.0", variant("e", kind="tensorrt", fmt="torch_tensorrt"))
    note(reg.set_alias, "m", "prod", "1.0.0")
    note(reg.set_alias, "m", "prod", "1.0.0")
    note(reg.set_alias, "m", "prod", "9.9.9")
    note(reg.remove_alias, "m", "staging")
    note(reg.remove_alias, "m", "staging")
    note(reg.set_labels, "m", "1.2.0", {"team": "nlp", "x": ""})
    note(reg.set_labels, "nope", "1.2.0", {"team": "nlp"})
    note(reg.register_version, "n_1", "0.1.0", [variant("f")])
    second, _ = reg.take_lease([digest("manifest:g")], ttl_seconds=600)
    out.append(reg.renew_lease(second, ttl_seconds=900))
    reg.release_lease(second)
    out.append(reg.renew_lease(second, ttl_seconds=900))
    third, _ = reg.take_lease([digest("manifest:h")], ttl_seconds=0.05)
    time.sleep(0.1)
    note(reg.register_version, "m", "3.0.0", [variant("h")], lease=third)
    out.append(reg.pending_deletions([digest("weights:w")]))
    out.append(reg.clear_stale_deletion(digest("weights:w")))
    doomed_digest = digest("weights:never-referenced")
    _, decided, _ = reg.decide_deletions([doomed_digest], window_seconds=0.05)
    out.append(decided)
    out.append(reg.pending_deletions([doomed_digest]))
    out.append(reg.clear_stale_deletion(doomed_digest))  # its gc is still deleting
    later, waiting = reg.take_lease([doomed_digest], ttl_seconds=600)
    out.append(waiting)
    time.sleep(0.1)
    out.append(reg.clear_stale_deletion(doomed_digest))  # past its deadline: free again
    reg.release_lease(later)
    return out


def _strip(value: Any) -> Any:
    """Results with their times taken out (the two runs happen at different times)."""
    if isinstance(value, dt.datetime):
        assert value.tzinfo is not None
        return "<time>"
    if hasattr(value, "__dataclass_fields__"):
        return (
            type(value).__name__,
            {k: _strip(getattr(value, k)) for k in value.__dataclass_fields__},
        )
    if isinstance(value, (list, tuple)):
        return [_strip(v) for v in value]
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items()}
    return value


def _rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(path)
    out = {}
    for table, columns in regsqlite.TABLE_COLUMNS.items():
        rows = []
        for row in conn.execute(f"SELECT {', '.join(columns)} FROM {table}"):
            cells = []
            for col, cell in zip(columns, row):
                if isinstance(cell, str) and _TS.match(cell):
                    cell = "<time>"  # stored as the ORM stores it, or the match fails
                elif col == "lease_id":
                    cell = "<lease>"
                cells.append(cell)
            rows.append(tuple(cells))
        out[table] = sorted(rows, key=repr)
    conn.close()
    return out


def test_both_paths_write_the_same_rows_and_answer_alike(tmp_path: Path) -> None:
    full_url, lite_url = _new(tmp_path, "full.db"), _new(tmp_path, "lite.db")
    full = Registry(full_url)
    lite = _lite(lite_url)
    try:
        assert _strip(_script(lite)) == _strip(_script(full))
    finally:
        full.close()
        lite.close()
    full_rows, lite_rows = _rows(tmp_path / "full.db"), _rows(tmp_path / "lite.db")
    assert lite_rows == full_rows
    assert len(lite_rows["events"]) > 10 and lite_rows["versions"]  # the script did write


def test_reads_answer_alike_on_one_file(tmp_path: Path) -> None:
    url = _new(tmp_path, "r.db")
    full = Registry(url)
    _script(full)
    lite = _lite(url)
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("resolve", ("m",), {}),
        ("resolve", ("m@prod",), {}),
        ("resolve", ("m@staging",), {}),
        ("resolve", ("m:1.2.0",), {}),
        ("resolve", ("m@^1",), {}),
        ("resolve", ("m@~1.0",), {}),
        ("resolve", ("m@>=2.0.0-rc.0",), {}),
        ("resolve", ("m@2.0.0-rc.1",), {}),
        ("resolve", (f"m@{digest('manifest:d')}",), {}),
        ("resolve", ("m@^4",), {}),
        ("resolve", ("M",), {}),
        ("resolve", ("mm",), {}),
        ("resolve", ("n_1",), {}),
        ("resolve", ("m", "latest"), {}),
        ("get_version", ("m", "1.0.0+other"), {}),
        ("get_version", ("m", "7.0.0"), {}),
        ("get_model", ("m",), {}),
        ("get_model", ("x",), {}),
        ("list_models", (), {}),
        ("list_models", (), {"prefix": "n_"}),
        ("list_models", (), {"prefix": "n%"}),
        ("list_models", (), {"prefix": "n/"}),
        ("list_models", (), {"prefix": "N"}),
        ("list_models", (), {"label": "team"}),
        ("list_models", (), {"label": ["team=nlp", "x="]}),
        ("list_models", (), {"alias": "prod"}),
        ("list_models", (), {"since": dt.datetime(2000, 1, 1)}),
        ("list_models", (), {"since": dt.datetime(2999, 1, 1, tzinfo=dt.timezone.utc)}),
        ("list_models", (), {"limit": 1}),
        ("list_versions", ("m",), {}),
        ("list_versions", ("m",), {"include_prerelease": False}),
        ("list_versions", ("m",), {"label": "team=nlp"}),
        ("list_versions", ("m",), {"descending": False, "limit": 2}),
        ("list_versions", ("m",), {"limit": 2}),
        ("list_versions", ("zz",), {}),
    ]
    bad: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("resolve", ("m@",), {}),
        ("resolve", ("../etc",), {}),
        ("resolve", ("m@" + "9" * 40,), {}),
        ("list_models", (), {"limit": 0}),
        ("list_models", (), {"limit": True}),
        ("list_models", (), {"cursor": "bm90IGEgY3Vyc29y"}),
        ("list_models", (), {"cursor": 7}),
        ("list_models", (), {"prefix": "\x00"}),
        ("list_models", (), {"label": "=v"}),
        ("list_models", (), {"since": "yesterday"}),
        ("list_versions", ("m",), {"cursor": "W10"}),
        ("set_alias", ("m", "Bad Alias", "1.0.0"), {}),
        ("set_labels", ("m", "1.0.0", {"k": 3}), {}),
        ("take_lease", (["sha256:zz"],), {"ttl_seconds": 60}),
        ("register_version", ("m", "4.0.0", []), {}),
        ("register_version", ("m", "4.0.0", "abc"), {}),
        ("register_version", ("m", "4.0.0", [variant("q"), variant("q")]), {}),
        ("register_version", ("m", "4.0.0", [variant("q")]), {"aliases": "prod"}),
    ]

    def answer(reg: Any, name: str, a: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        try:
            return _strip(getattr(reg, name)(*a, **kw))
        except ModelVaultError as exc:
            return (type(exc).__name__, str(exc), getattr(exc, "hint", None))

    try:
        for name, a, kw in calls + bad:
            assert answer(lite, name, a, kw) == answer(full, name, a, kw), (name, a, kw)
        for name, a, kw in bad:
            assert isinstance(answer(lite, name, a, kw), tuple), (name, a, kw)
        # cursors go from one to the other: they are the same opaque strings
        page = lite.list_versions("m", limit=2)
        assert page.next_cursor is not None
        nxt = full.list_versions("m", limit=2, cursor=page.next_cursor)
        assert _strip(lite.list_versions("m", limit=2, cursor=page.next_cursor)) == _strip(nxt)
    finally:
        lite.close()
        full.close()


_versions = st.tuples(
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 3),
    st.sampled_from(["", "-alpha", "-alpha.1", "-beta.2", "-rc.1", "-0"]),
)
_specs = st.builds(
    lambda op, v: f"{op}{v[0]}.{v[1]}.{v[2]}{v[3]}",
    st.sampled_from(["", "^", "~", ">=", ">", "<", "<=", "="]),
    _versions,
) | st.sampled_from(["^1", "~1.2", "1.x", "*", ">=1.0.0 <2.0.0", "1.0.0 - 2.1.0", "^0.0", "latest"])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(versions=st.sets(_versions, min_size=1, max_size=25), specs=st.lists(_specs, max_size=12))
def test_every_spec_resolves_alike(
    tmp_path_factory: pytest.TempPathFactory,
    versions: set[tuple[int, int, int, str]],
    specs: list[str],
) -> None:
    url = _new(tmp_path_factory.mktemp("specs"), "s.db")
    full = Registry(url)
    for i, (a, b, c, pre) in enumerate(sorted(versions)):
        full.register_version("m", f"{a}.{b}.{c}{pre}", [variant(f"v{i}")])
    lite = _lite(url)
    try:
        for spec in specs:
            answers = []
            for reg in (full, lite):
                try:
                    answers.append(reg.resolve("m", spec).version)
                except ModelVaultError as exc:
                    answers.append((type(exc).__name__, str(exc)))
            assert answers[0] == answers[1], spec
    finally:
        lite.close()
        full.close()


# --- what it opens, and what it leaves to the full registry -------------------------------


@pytest.mark.parametrize(
    "make",
    ["missing", "memory", "query", "percent", "postgres", "directory", "garbage", "empty"],
)
def test_it_opens_only_a_plain_sqlite_file_it_can_read(tmp_path: Path, make: str) -> None:
    path = tmp_path / "r.db"
    url = f"sqlite:///{path}"
    if make == "memory":
        url = "sqlite:///:memory:"
    elif make == "query":
        upgrade(url)
        url += "?timeout=1"
    elif make == "percent":
        url = f"sqlite:///{tmp_path / 'a%20b.db'}"
        upgrade(url)
    elif make == "postgres":
        url = "postgresql://nobody@127.0.0.1:1/none"
    elif make == "directory":
        path.mkdir()
    elif make == "garbage":
        path.write_bytes(b"not a database, but the same size as a page header" * 100)
    elif make == "empty":
        path.touch()
    assert LiteRegistry.open(url) is None
    assert not (make == "missing" and path.exists())  # looking did not create it


def _set_revision(path: Path, rev: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute("UPDATE alembic_version SET version_num = ?", (rev,))
    conn.commit()
    conn.close()


def test_a_database_it_cannot_vouch_for_goes_to_the_full_registry(tmp_path: Path) -> None:
    """Behind, ahead, drifted, or not in WAL mode: the full registry opens it and says so."""
    behind = _new(tmp_path, "behind.db")
    _set_revision(tmp_path / "behind.db", "0001")
    assert LiteRegistry.open(behind) is None

    ahead = _new(tmp_path, "ahead.db")
    _set_revision(tmp_path / "ahead.db", "9999")
    assert LiteRegistry.open(ahead) is None
    with pytest.raises(SchemaAheadError):
        _ = Vault(ahead, str(tmp_path / "store")).registry

    drifted = _new(tmp_path, "drift.db")
    conn = sqlite3.connect(tmp_path / "drift.db")
    conn.execute("ALTER TABLE events DROP COLUMN alias")
    conn.commit()
    conn.close()
    assert LiteRegistry.open(drifted) is None
    with pytest.raises(SchemaDriftError, match=r"events\.alias is missing"):
        _ = Vault(drifted, str(tmp_path / "store")).registry

    journal = _new(tmp_path, "journal.db")
    conn = sqlite3.connect(tmp_path / "journal.db")
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()
    assert LiteRegistry.open(journal) is None
    reg = Vault(journal, str(tmp_path / "store")).registry
    assert isinstance(reg, Registry)  # which switches it to WAL, as it does for a new file
    reg.close()
    assert LiteRegistry.open(journal) is not None


def test_a_vault_on_the_embedded_default_uses_it(tmp_path: Path) -> None:
    vault = Vault()
    assert isinstance(vault.registry, Registry)  # the first open creates it: the full registry
    vault.registry.register_version("m", "1.0.0", [variant("a")])
    vault.close()
    again = Vault(read_only=True)
    assert isinstance(again.registry, LiteRegistry)
    assert again.registry.resolve("m").version == "1.0.0"
    again.close()


def test_an_sqlite_error_after_opening_is_answered_by_the_full_registry(tmp_path: Path) -> None:
    url = _new(tmp_path, "r.db")
    lite = _lite(url)
    lite.register_version("m", "1.0.0", [variant("a")])
    conn = sqlite3.connect(tmp_path / "r.db")
    conn.execute("DROP TABLE labels")  # changed under an open registry
    conn.commit()
    conn.close()
    with pytest.raises(SchemaDriftError, match="table labels is missing"):
        lite.resolve("m")  # "no such table" in the lite path; the full one explains it
    lite.close()


def test_what_it_does_not_do_the_full_registry_does_on_the_same_file(tmp_path: Path) -> None:
    lite = _lite(_new(tmp_path, "r.db"))
    lite.register_version("m", "1.0.0", [variant("a")], aliases=["prod"])
    assert [e.kind for e in lite.events("m")] == ["alias.set", "version.register", "model.create"]
    result = lite.delete_version("m", "1.0.0", force=True)  # the full registry's method
    assert result.aliases_removed == ["prod"]
    with pytest.raises(ModelVaultError, match="has no version"):
        lite.resolve("m")  # and the lite path sees its write at once
    lite.close()


def test_read_only_refuses_every_write_before_it_starts(tmp_path: Path) -> None:
    url = _new(tmp_path, "r.db")
    Registry(url).register_version("m", "1.0.0", [variant("a")])
    before = _rows(tmp_path / "r.db")
    lite = _lite(url, read_only=True)
    full = Registry(url, read_only=True)
    writes = [
        ("set_alias", ("m", "prod", "1.0.0")),
        ("remove_alias", ("m", "prod")),
        ("set_labels", ("m", "1.0.0", {"a": "b"})),
        ("register_version", ("m", "2.0.0", [variant("b")])),
        ("add_variant", ("m", "1.0.0", variant("c"))),
        ("release_lease", ("x",)),
    ]
    for name, a in writes:
        with pytest.raises(RegistryReadOnlyError) as lite_err:
            getattr(lite, name)(*a)
        with pytest.raises(RegistryReadOnlyError) as full_err:
            getattr(full, name)(*a)
        assert str(lite_err.value) == str(full_err.value)
    with pytest.raises(RegistryReadOnlyError):
        lite.take_lease([digest("x")], ttl_seconds=60)
    assert lite.resolve("m").version == "1.0.0"
    lite.close()
    full.close()
    assert _rows(tmp_path / "r.db") == before


def test_concurrent_registrations_of_one_version_decide_once(tmp_path: Path) -> None:
    url = _new(tmp_path, "r.db")
    answers: list[bool] = []
    failures: list[BaseException] = []
    start = threading.Barrier(6)

    def push() -> None:
        lite = _lite(url)
        try:
            start.wait()
            _, created = lite.register_version("m", "1.0.0", [variant("a")], labels={"k": "v"})
            answers.append(created)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)
        finally:
            lite.close()

    threads = [threading.Thread(target=push) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert failures == []
    assert sorted(answers) == [False] * 5 + [True]
    rows = _rows(tmp_path / "r.db")
    assert len(rows["versions"]) == 1 and len(rows["variants"]) == 1


def test_conflicting_content_and_lapsed_leases_are_refused_as_by_the_full_registry(
    tmp_path: Path,
) -> None:
    lite = _lite(_new(tmp_path, "r.db"))
    lite.register_version("m", "1.0.0", [variant("a")])
    with pytest.raises(VersionExistsError, match="Versions are immutable"):
        lite.register_version("m", "1.0.0", [variant("b")])
    with pytest.raises(VariantExistsError):
        lite.add_variant("m", "1.0.0", variant("a"))
    lease, _ = lite.take_lease([digest("manifest:c"), digest("weights:w")], ttl_seconds=0.05)
    time.sleep(0.1)
    with pytest.raises(LeaseLapsedError, match="nothing was registered"):
        lite.register_version("m", "2.0.0", [variant("c")], lease=lease)
    with pytest.raises(AliasNotFoundError, match="it has no aliases"):
        lite.resolve("m@prod")
    with pytest.raises(InvalidArgumentError):
        lite.take_lease([digest("a")], ttl_seconds=float("nan"))
    assert [v.version for v in lite.list_versions("m").items] == ["1.0.0"]
    lite.close()


def test_the_cast_is_honest_every_public_registry_method_is_reachable(tmp_path: Path) -> None:
    lite = cast(Any, _lite(_new(tmp_path, "r.db")))
    public = [n for n in dir(Registry) if not n.startswith("_")]
    for name in public:
        assert getattr(lite, name) is not None, name
    lite.close()


def test_times_before_the_year_1000_compare_as_the_full_registry_stores_them(
    tmp_path: Path,
) -> None:
    url = _new(tmp_path, "r.db")
    full = Registry(url)
    full.register_version("m", "1.0.0", [variant("a")])
    lite = _lite(url)
    for year in (1, 300, 999, 1000):
        since = dt.datetime(year, 1, 1, tzinfo=dt.timezone.utc)
        assert [m.name for m in lite.list_models(since=since).items] == ["m"], year
        assert [m.name for m in full.list_models(since=since).items] == ["m"], year
        assert len(lite.list_versions("m", since=since).items) == 1, year
    lite.close()
    full.close()


def test_after_close_calls_go_to_the_full_registry_as_before(tmp_path: Path) -> None:
    url = _new(tmp_path, "r.db")
    lite = _lite(url)
    lite.register_version("m", "1.0.0", [variant("a")])
    lite.close()
    assert lite.resolve("m").version == "1.0.0"  # a closed full registry reconnects too
    lite.set_alias("m", "prod", "1.0.0")
    assert lite.resolve("m@prod").version == "1.0.0"
    lite.close()


def test_it_keeps_to_the_file_it_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative URL, or MVAULT_REGISTRY, may name another file later: the calls it hands
    to the full registry still go to this one."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    upgrade("sqlite:///r.db")
    lite = _lite("sqlite:///r.db")
    lite.register_version("m", "1.0.0", [variant("a")])
    monkeypatch.chdir(tmp_path / "b")
    assert [e.kind for e in lite.events("m")][-1] == "model.create"  # the full registry's
    assert not (tmp_path / "b" / "r.db").exists()
    lite.close()
    assert LiteRegistry.open("sqlite:///~/r.db") is None  # the engine does not expand ~


def test_after_an_sqlite_error_every_call_is_the_full_registrys(tmp_path: Path) -> None:
    url = _new(tmp_path, "r.db")
    lite = _lite(url)
    lite.register_version("m", "1.0.0", [variant("a")])
    conn = sqlite3.connect(tmp_path / "r.db")
    conn.execute("ALTER TABLE aliases RENAME TO aliases_gone")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaDriftError):
        lite.resolve("m@prod")
    conn = sqlite3.connect(tmp_path / "r.db")
    conn.execute("ALTER TABLE aliases_gone RENAME TO aliases")
    conn.commit()
    conn.close()
    assert lite.resolve("m").version == "1.0.0"  # answered by the full registry now
    assert lite._conn is None
    lite.close()


def test_strict_mode_fails_instead_of_falling_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelvault.registry import lite as lite_module

    url = _new(tmp_path, "r.db")
    lite = _lite(url)
    conn = sqlite3.connect(tmp_path / "r.db")
    conn.execute("DROP TABLE labels")
    conn.commit()
    conn.close()
    monkeypatch.setattr(lite_module, "STRICT", True)
    with pytest.raises(ModelVaultError, match="lite registry: no such table: labels"):
        lite.list_models(label="k")
    lite.close()
