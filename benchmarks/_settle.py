"""Database preparation shared by both sides of the registry benchmark.

Imported by ``registry_bench.py`` and by ``_mlflow_side.py`` (which runs in
MLflow's own environment), so it needs nothing but SQLAlchemy.
"""

from __future__ import annotations

import gc

from sqlalchemy import Engine, text


def settle(engine: Engine) -> None:
    """Statistics fresh, background work done, before anything is timed (both systems)."""
    if engine.dialect.name == "postgresql":
        # VACUUM now, so autovacuum does not wake up in the middle of a measurement.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    gc.collect()
