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
    "modelvault.cli.history",
    "modelvault.cli.completion",
)

#: The modules that define (or add options to) each command: a command line that
#: names one builds only its parser, not all of them (start-up; tests/cli/test_startup.py
#: holds this equal to what the modules register).
_MODELS = ("modelvault.cli.models", "modelvault.cli.signing")
COMMANDS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("alias", "export", "gc", "import", "ls", "mv", "pull", "push", "rm", "show", "verify"),
        _MODELS,
    ),
    "sign": _MODELS,
    "inspect": ("modelvault.cli.bundles",),
    "db": ("modelvault.cli.db",),
    "cache": ("modelvault.cli.cache",),
    "doctor": ("modelvault.cli.doctor",),
    "quickstart": ("modelvault.cli.quickstart",),
    "diff": ("modelvault.cli.history",),
    "label": ("modelvault.cli.history",),
    "log": ("modelvault.cli.history",),
    "completion": ("modelvault.cli.completion",),
}
_VALUED = ("--registry", "--store")  # the global options that take a value


def command_of(argv: Sequence[str]) -> str | None:
    """The command word of a command line (after the global options), or None."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _VALUED:
            skip = True
        elif arg == "--" or not arg.startswith("-"):
            return None if arg == "--" else arg
    return None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line and exit code 2, like every other usage error.
        sys.stderr.write(f"mvault: error: {message}\nhint: run `{self.prog} --help`\n")
        raise SystemExit(2)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``mvault`` parser: every command's, or, when ``argv`` names a known command,
    only the parsers of the modules that define it."""
    command = command_of(argv) if argv is not None else None
    modules = COMMANDS.get(command, _COMMAND_MODULES) if command is not None else _COMMAND_MODULES
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
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress display (it is off anyway when stderr is not a terminal, "
        "or with MVAULT_NO_PROGRESS=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # a command group not built yet
            raise
        module.register(sub)
    return parser


def _quiet_frameworks() -> None:
    """Keep torch's own warnings and C++ log lines off the terminal (MVAULT_DEBUG=1 shows them).

    modelvault reports what went wrong in its own line; torch's messages about
    the same event (``W1201 ... Expect archive file``, deprecation notes) only
    bury it. Set before torch is imported, which the plugins do lazily.
    """
    if os.environ.get("MVAULT_DEBUG", "") not in ("", "0"):
        return
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    import warnings

    for module in ("torch", "torch_tensorrt", "torchvision", "transformers"):
        warnings.filterwarnings("ignore", module=rf"{module}(\..*)?$")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mvault``; returns the exit code."""
    _quiet_frameworks()
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(words)
    args = parser.parse_args(words)
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
        import traceback

        traceback.print_exc()
    message = str(exc) or type(exc).__name__
    from ..errors import ModelVaultError

    if not isinstance(exc, (ModelVaultError, OSError)):
        message = f"unexpected {type(exc).__name__}: {message}"
    sys.stderr.write(f"mvault: error: {message.splitlines()[0] if message else ''}\n")
    hint = getattr(exc, "hint", None) or _hint_for(exc, debug)
    if hint:
        sys.stderr.write(f"hint: {hint}\n")
    return exit_code_for(exc)


def _hint_for(exc: BaseException, debug: bool) -> str | None:
    """What to do about an error that brought no hint of its own."""
    from ..errors import ModelVaultError

    if isinstance(exc, ModelVaultError):
        return None
    if isinstance(exc, FileNotFoundError):
        return "check the path (it is relative to the current directory)"
    if isinstance(exc, PermissionError):
        return "check the file's permissions, or point MVAULT_HOME / the path somewhere writable"
    if isinstance(exc, OSError):
        return "check the disk, the path and the network, then try again"
    if debug:
        return None
    return (
        "this is a bug in modelvault or a plugin: please report it with the output of the same "
        "command run with MVAULT_DEBUG=1"
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
