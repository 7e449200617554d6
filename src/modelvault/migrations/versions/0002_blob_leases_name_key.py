"""Blob leases and deletion decisions (gc cannot race a push); model names unique ignoring case.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

The upgrade refuses, before it changes anything, a database that already
holds model names differing only in case, and lists them: which of them is
the real one is for a person to decide.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from modelvault.errors import ConflictError

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_MYSQL: dict[str, Any] = {
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
    "mysql_engine": "InnoDB",
}
_MODELS = sa.table("models", sa.column("id", sa.Integer), sa.column("name", sa.String))


def name_conflicts(names: Sequence[str]) -> list[list[str]]:
    """Groups of names that are one name ignoring case, each sorted, the groups sorted."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name in names:
        groups[name.lower()].append(name)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.select(_MODELS.c.id, _MODELS.c.name)).all()
    clashes = name_conflicts([r.name for r in rows])
    if clashes:
        listed = "; ".join(" = ".join(g) for g in clashes)
        raise ConflictError(
            f"cannot make model names unique ignoring case: {len(clashes)} group(s) of existing "
            f"models differ only in case: {listed}; nothing was changed",
            hint="rename all but one model of each group (UPDATE models SET name = ... WHERE "
            "name = ...), then run: mvault db upgrade",
        )
    op.add_column("models", sa.Column("name_key", sa.String(length=128), nullable=True))
    if rows:
        conn.execute(
            sa.text("UPDATE models SET name_key = :key WHERE id = :id"),
            [{"key": r.name.lower(), "id": r.id} for r in rows],
        )
    with op.batch_alter_table("models") as batch:
        batch.alter_column("name_key", existing_type=sa.String(length=128), nullable=False)
        batch.create_unique_constraint(op.f("uq_models_name_key"), ["name_key"])

    op.create_table(
        "blob_leases",
        sa.Column("lease_id", sa.String(length=64), nullable=False),
        sa.Column("blob_digest", sa.String(length=200), nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("lease_id", "blob_digest", name=op.f("pk_blob_leases")),
        **_MYSQL,
    )
    op.create_index(
        op.f("ix_blob_leases_blob_digest_expires_at"),
        "blob_leases",
        ["blob_digest", "expires_at"],
        unique=False,
    )
    op.create_table(
        "blob_deletions",
        sa.Column("blob_digest", sa.String(length=200), nullable=False),
        sa.Column("gc_id", sa.String(length=64), nullable=False),
        sa.Column("decided_at", _TS, nullable=False),
        sa.Column("deadline", _TS, nullable=False),
        sa.PrimaryKeyConstraint("blob_digest", name=op.f("pk_blob_deletions")),
        **_MYSQL,
    )
    op.create_index(op.f("ix_blob_deletions_gc_id"), "blob_deletions", ["gc_id"], unique=False)
    op.create_table(
        "registry_locks",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_registry_locks")),
        **_MYSQL,
    )
    # The registry recreates a missing lock row on first use; this saves it the trip.
    op.execute(sa.text("INSERT INTO registry_locks (name) VALUES ('blobs')"))


def downgrade() -> None:
    for table in ("registry_locks", "blob_deletions", "blob_leases"):
        op.drop_table(table)
    with op.batch_alter_table("models") as batch:
        batch.drop_constraint(op.f("uq_models_name_key"), type_="unique")
        batch.drop_column("name_key")
