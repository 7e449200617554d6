"""What every ``mvault`` command shares: output, errors, progress, options."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from .. import errors as E

__all__ = [
    "EXIT_CODES",
    "add_json",
    "emit",
    "exit_code_for",
    "iso",
    "open_vault",
    "print_table",
]

#: Exit codes, most specific class first (documented in README's command reference).
EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (E.MissingDependencyError, 8),
    (E.IntegrityError, 5),
    (E.SignatureError, 5),
    (E.FormatError, 5),
    (E.NotFoundError, 3),
    (E.ConflictError, 4),
    (E.RegistryUnavailableError, 6),
    (E.RegistryAccessError, 6),
    (E.StoreUnavailableError, 6),
    (E.StoreAccessError, 6),
    (E.SchemaBehindError, 6),
    (E.SchemaAheadError, 6),
    (E.SchemaDriftError, 6),
    (E.IncompatibleError, 7),
    (E.DeviceError, 7),
    (E.InvalidArgumentError, 2),
    (E.ConfigError, 2),
    (E.ModelVaultError, 1),
    (FileNotFoundError, 3),
    (FileExistsError, 4),
    (PermissionError, 6),
    (OSError, 1),
]


def exit_code_for(exc: BaseException) -> int:
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return 1


def open_vault(*, write: bool) -> Any:
    """The configured vault, opened for what the command does.

    A command that only reads (``ls``, ``show``, ``pull``, ``log``...) opens the
    registry read-only: it works on a read-only home, and never creates a
    SQLite registry (a mistyped path is an error, not a new empty registry). A
    command that writes checks first that the registry takes changes, so on a
    read-only home it stops with one line before doing any work.
    """
    from ..vault import Vault

    vault = Vault(read_only=not write)
    if write:
        vault.registry.check_writable()
    return vault


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def iso(value: Any) -> str | None:
    """A time as ISO 8601 in UTC with a ``Z`` (naive times are taken as UTC); None stays None."""
    if value is None or value == "":
        return None
    from datetime import datetime, timezone

    when: object = value
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(when, datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return str(value)


def _default(o: Any) -> Any:
    from datetime import datetime

    if isinstance(o, datetime):
        return iso(o)
    if hasattr(o, "isoformat"):
        return o.isoformat()
    if isinstance(o, bytes):
        return o.hex()
    if hasattr(o, "__fspath__"):
        return str(o)
    if hasattr(o, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def emit(data: Any, *, as_json: bool, human: Callable[[Any], object] | None = None) -> None:
    """Print ``data`` as JSON, or through ``human`` for people."""
    if as_json or human is None:
        json.dump(data, sys.stdout, indent=2, default=_default, sort_keys=False)
        sys.stdout.write("\n")
    else:
        human(data)


def print_table(
    rows: Sequence[Sequence[Any]], headers: Sequence[str], out: TextIO | None = None
) -> None:
    out = out or sys.stdout
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")


def human_size(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover
