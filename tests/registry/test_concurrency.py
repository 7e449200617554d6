"""Concurrent writers and dropped connections, on every database."""

from __future__ import annotations

import multiprocessing
import queue
from collections import Counter, defaultdict
from typing import Any

import pytest
from sqlalchemy import create_engine, event, func, select, text

from modelvault.errors import RegistryUnavailableError, VersionNotFoundError
from modelvault.registry import Registry
from modelvault.registry.db import normalize_url
from modelvault.registry.schema import Blob, Event, Variant, Version

from . import _workers
from .helpers import digest, variant

WORKERS = 16


@pytest.mark.slow
def test_sixteen_processes_register_at_once(db_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_workers.register_all, args=(db_url, i, barrier, out))
        for i in range(WORKERS)
    ]
    for p in procs:
        p.start()
    results: dict[int, list[tuple[str, str, str]]] = {}
    try:
        for _ in procs:
            worker, res = out.get(timeout=240)
            results[worker] = res
    except queue.Empty:
        pytest.fail(f"only {len(results)} of {WORKERS} workers reported back")
    finally:
        for p in procs:
            p.join(timeout=60)
    errors = [r for res in results.values() for r in res if r[1] == "error"]
    assert errors == []
    by_version: dict[str, Counter[str]] = defaultdict(Counter)
    winners: dict[str, set[str]] = defaultdict(set)
    for res in results.values():
        for version, outcome, dig in res:
            by_version[version][outcome] += 1
            if outcome in ("created", "noop"):
                winners[version].add(dig)
    for k in range(_workers.CONTESTED):
        diff, same = f"2.0.{k}", f"3.0.{k}"
        assert by_version[diff] == Counter(created=1, exists=WORKERS - 1), diff
        assert by_version[same] == Counter(created=1, noop=WORKERS - 1), same
        assert len(winners[same]) == 1
    for w in range(WORKERS):
        for j in range(_workers.UNCONTESTED):
            assert by_version[f"1.{w}.{j}"] == Counter(created=1)
    with Registry(db_url) as reg:
        expected = WORKERS * _workers.UNCONTESTED + 2 * _workers.CONTESTED
        listed: list[str] = []
        cursor = None
        while True:
            page = reg.list_versions("shared/model", limit=37, cursor=cursor)
            listed += [v.version for v in page.items]
            if (cursor := page.next_cursor) is None:
                break
        assert len(listed) == len(set(listed)) == expected
        for k in range(_workers.CONTESTED):
            # the registered content is the winner's
            info = reg.get_version("shared/model", f"2.0.{k}")
            assert {v.manifest_digest for v in info.variants} == winners[f"2.0.{k}"]
            assert len(info.variants) == 1
        registered = [
            e for e in reg.events("shared/model", limit=1000) if e.kind == "version.register"
        ]
        assert len(registered) == expected
        assert [e.kind for e in reg.events("shared/model", limit=1000)].count("model.create") == 1
        with reg.engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(Variant)) == expected
            # the weights blob all workers share was recorded once
            assert conn.scalar(select(func.count()).where(Blob.digest == digest("weights:w"))) == 1


@pytest.mark.slow
def test_concurrent_first_open_upgrades_once(fresh_db: str) -> None:
    """Several processes auto-upgrade one empty database at once: one migrates, the rest wait."""
    n = 6
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_workers.open_and_create, args=(fresh_db, i, barrier, out))
        for i in range(n)
    ]
    for p in procs:
        p.start()
    try:
        outcomes = dict(out.get(timeout=240) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=60)
    assert outcomes == dict.fromkeys(range(n), "ok")
    with Registry(fresh_db) as reg:
        assert len(reg.list_models(prefix="first-open-").items) == n


def _backend_id(dbapi_conn: Any, kind: str) -> int:
    cur = dbapi_conn.cursor()
    cur.execute("SELECT pg_backend_pid()" if kind == "postgresql" else "SELECT CONNECTION_ID()")
    row = cur.fetchone()
    cur.close()
    return int(row[0])


@pytest.mark.sa_engine
def test_connection_killed_mid_transaction(reg: Registry, db_url: str, db_kind: str) -> None:
    reg.register_version("m", "1.0.0", [variant("before")])
    admin = create_engine(normalize_url(db_url), isolation_level="AUTOCOMMIT")
    fired: list[str] = []

    def kill(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if fired or not statement.lstrip().upper().startswith("INSERT INTO VARIANT_BLOBS"):
            return
        fired.append(statement)
        dbapi_conn = conn.connection.dbapi_connection
        if db_kind == "sqlite":
            dbapi_conn.close()  # the closest SQLite has to a dropped connection
            return
        victim = _backend_id(dbapi_conn, db_kind)
        with admin.connect() as other:
            if db_kind == "postgresql":
                other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": victim})
            else:
                other.execute(text(f"KILL {victim}"))

    event.listen(reg.engine, "before_cursor_execute", kill)
    with reg.engine.connect() as conn:
        events_before = conn.scalar(select(func.count()).select_from(Event))
    try:
        with pytest.raises(RegistryUnavailableError, match="unavailable") as err:
            reg.register_version(
                "m", "2.0.0", [variant("during", shared="only-during")], aliases=["prod"]
            )
        assert fired
        assert "nothing was written" in (err.value.hint or "")
    finally:
        event.remove(reg.engine, "before_cursor_execute", kill)
        admin.dispose()
    # no partial rows: no version, no variant, no blob, no alias, no event
    with pytest.raises(VersionNotFoundError):
        reg.get_version("m", "2.0.0")
    with reg.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Version)) == 1
        assert conn.scalar(select(func.count()).select_from(Variant)) == 1
        assert (
            conn.scalar(select(func.count()).where(Blob.digest == digest("weights:only-during")))
            == 0
        )
        assert conn.scalar(select(func.count()).select_from(Event)) == events_before
    assert reg.get_model("m").aliases == {}
    # the next call works
    info, created = reg.register_version(
        "m", "2.0.0", [variant("during", shared="only-during")], aliases=["prod"]
    )
    assert created
    assert info.aliases == ["prod"]
