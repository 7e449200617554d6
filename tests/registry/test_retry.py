"""The retry helper against real deadlocks, and error translation."""

from __future__ import annotations

import contextlib
import threading

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from modelvault.errors import RegistryError
from modelvault.registry import Registry
from modelvault.registry import db as regdb
from modelvault.registry.schema import Model


@pytest.mark.sa_engine
def test_deadlock_is_retried(reg: Registry, db_kind: str) -> None:
    """Two writers lock two rows in opposite orders: the database picks a victim, the helper retries it."""
    reg.create_model("a")
    reg.create_model("b")
    barrier = threading.Barrier(2)
    attempts: list[str] = []
    results: dict[str, str] = {}
    failures: list[BaseException] = []

    def writer(first: str, second: str) -> None:
        def fn(s: Session) -> str:
            attempts.append(first)
            s.execute(update(Model).where(Model.name == first).values(description=f"by {first}"))
            if len(attempts) <= 2:  # only the first round meets at the barrier
                # SQLite: the other writer waits for the lock at BEGIN IMMEDIATE, never arrives
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait(timeout=3)
            s.execute(update(Model).where(Model.name == second).values(description=f"by {first}"))
            return first

        try:
            results[first] = regdb.run_transaction(reg.engine, fn)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=p) for p in (("a", "b"), ("b", "a"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert failures == []
    assert results == {"a": "a", "b": "b"}
    if db_kind != "sqlite":
        assert len(attempts) >= 3  # the deadlock victim ran again


def test_non_retryable_errors_are_translated(reg: Registry) -> None:
    from sqlalchemy import text

    def bad(s: Session) -> None:
        s.execute(text("SELECT * FROM no_such_table"))

    with pytest.raises(RegistryError, match="no_such_table"):
        regdb.run_transaction(reg.engine, bad)
    assert reg.create_model("still-works").name == "still-works"
