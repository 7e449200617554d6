"""The ``mvault`` command.

Each command group lives in its own module with a ``register(subparsers)``
function. Errors become one line (plus a hint) on stderr and an exit code from
:data:`modelvault.cli._common.EXIT_CODES`; ``MVAULT_DEBUG=1`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from .._version import __version__
from ._common import exit_code_for

# Command modules, imported when the parser is built (they import nothing heavy).
_COMMAND_MODULES = (
    "modelvault.cli.models",
    "modelvault.cli.signing",  # after models: it adds options to push, pull and verify
    "modelvault.cli.bundles",
    "modelvault.cli.db",
    "modelvault.cli.cache",
    "modelvault.cli.doctor",
    "modelvault.cli.quickstart",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line and exit code 2, like every other usage error.
        sys.stderr.write(f"mvault: error: {message}\nhint: run `{self.prog} --help`\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mvault",
        description="modelvault: push, pull and load verifiable model versions.",
    )
    parser.add_argument("--version", action="version", version=f"modelvault {__version__}")
    parser.add_argument(
        "--registry", metavar="URL", help="registry database URL (env MVAULT_REGISTRY)"
    )
    parser.add_argument(
        "--store", metavar="URL", help="blob store URL: file://, s3:// (env MVAULT_STORE)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # a command group not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mvault``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.registry:
        os.environ["MVAULT_REGISTRY"] = args.registry
    if args.store:
        os.environ["MVAULT_STORE"] = args.store
    from ..config import reload

    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        reload()
        rc = args.func(args)
        return int(rc or 0)
    except KeyboardInterrupt:
        sys.stderr.write("mvault: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the one place that turns errors into a line
        return report(exc)


def report(exc: BaseException) -> int:
    from ..config import settings

    try:
        debug = settings().debug
    except Exception:
        debug = os.environ.get("MVAULT_DEBUG", "") not in ("", "0")
    if debug:
        traceback.print_exc()
    message = str(exc) or type(exc).__name__
    from ..errors import ModelVaultError

    if not isinstance(exc, (ModelVaultError, OSError)):
        message = f"unexpected {type(exc).__name__}: {message}"
    sys.stderr.write(f"mvault: error: {message.splitlines()[0] if message else ''}\n")
    hint = getattr(exc, "hint", None)
    if hint:
        sys.stderr.write(f"hint: {hint}\n")
    elif not debug and not isinstance(exc, ModelVaultError):
        sys.stderr.write("hint: set MVAULT_DEBUG=1 for the traceback\n")
    return exit_code_for(exc)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
