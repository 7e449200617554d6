"""Schema drift: the live tables compared with :mod:`.schema`, in one query.

A database at the head revision can still differ from it when someone
changed it by hand (a dropped column, a missing table). Every command would
then fail somewhere with an SQL error; opening the registry instead says
what differs, once. The check reads table and column names (and whether an
unknown column must be filled) from the catalogue in one round trip, so it
costs about as much as the revision check next to it.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

from ._sqlite import DRIFT_QUERY
from .schema import Base

__all__ = ["schema_drift"]

_QUERIES = {
    "sqlite": DRIFT_QUERY,
    "postgresql": (
        "SELECT table_name, column_name, is_nullable = 'NO' AND column_default IS NULL "
        "FROM information_schema.columns WHERE table_schema = current_schema()"
    ),
    "mysql": (
        "SELECT table_name, column_name, is_nullable = 'NO' AND column_default IS NULL "
        "AND extra NOT LIKE '%auto_increment%' "
        "FROM information_schema.columns WHERE table_schema = DATABASE()"
    ),
}


def schema_drift(conn: Connection) -> list[str]:
    """What differs between the live tables and the ORM: one line per difference.

    Missing tables and columns are drift; an extra column is drift only when
    an insert that does not know it would fail (NOT NULL without a default).
    """
    dialect = "mysql" if conn.dialect.name in ("mysql", "mariadb") else conn.dialect.name
    live: dict[str, dict[str, bool]] = {}
    for table, column, required in conn.execute(text(_QUERIES[dialect])):
        live.setdefault(str(table), {})[str(column)] = bool(required)
    diffs: list[str] = []
    for table in Base.metadata.sorted_tables:
        have = live.get(table.name)
        if have is None:
            diffs.append(f"table {table.name} is missing")
            continue
        diffs += [
            f"column {table.name}.{c.name} is missing" for c in table.columns if c.name not in have
        ]
        diffs += [
            f"column {table.name}.{name} is not in the schema and has no default"
            for name, required in sorted(have.items())
            if required and name not in table.columns
        ]
    return diffs
