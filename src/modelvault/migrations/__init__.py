"""Alembic environment and revisions for the registry schema, shipped in the wheel.

Use :func:`modelvault.registry.db.upgrade` / ``mvault db upgrade``; no
``alembic.ini`` is needed: the configuration is built in code and the
library hands Alembic its own connection.
"""
