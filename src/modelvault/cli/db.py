"""``mvault db upgrade|current``: the registry schema."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import add_json, emit


def register(sub: Any) -> None:
    p = sub.add_parser("db", help="registry schema and roles: upgrade | current | grant-*")
    dsub = p.add_subparsers(
        dest="db_cmd", metavar="upgrade|current|grant-reader|grant-publisher", required=True
    )
    u = dsub.add_parser("upgrade", help="apply pending schema migrations")
    add_json(u)
    u.set_defaults(func=run_upgrade)
    c = dsub.add_parser("current", help="show the schema revision and whether it is up to date")
    add_json(c)
    c.set_defaults(func=run_current)
    for kind, what in (
        ("reader", "resolve, list, pull and load; never insert, update or delete"),
        ("publisher", "push and move aliases; never delete versions or history"),
    ):
        g = dsub.add_parser(f"grant-{kind}", help=f"SQL for a role that can {what}")
        g.add_argument("role", metavar="ROLE", help="PostgreSQL role, or MariaDB NAME[@HOST]")
        g.add_argument("--apply", action="store_true", help="run it on the registry database")
        add_json(g)
        g.set_defaults(func=run_grant, grant_kind=kind)


def run_upgrade(args: argparse.Namespace) -> int:
    from ..config import settings
    from ..registry import upgrade

    revision = upgrade(settings().registry_url)
    emit(
        {"revision": revision},
        as_json=args.json,
        human=lambda d: sys.stdout.write(f"schema at {d['revision']}\n"),
    )
    return 0


def run_current(args: argparse.Namespace) -> int:
    from ..config import settings
    from ..registry import current

    info = current(settings().registry_url)

    def human(d: dict[str, Any]) -> None:
        sys.stdout.write(f"revision {d.get('current')} (head {d.get('head')}): {d.get('status')}\n")
        for line in d.get("drift") or []:
            sys.stdout.write(f"  {line}\n")

    emit(info, as_json=args.json, human=human)
    return 0 if info.get("status") == "up to date" else 6


def run_grant(args: argparse.Namespace) -> int:
    from ..config import settings
    from ..grants import apply_grants, grant_sql

    url = settings().registry_url
    statements = grant_sql(args.grant_kind, args.role, url)
    if args.apply:
        apply_grants(statements, url)
    emit(
        {"role": args.role, "kind": args.grant_kind, "applied": args.apply, "sql": statements},
        as_json=args.json,
        human=lambda d: sys.stdout.write("".join(f"{s};\n" for s in d["sql"])),
    )
    return 0
