"""The ``vidsearch`` command: one entry point, one subcommand per verb.

Each subcommand lives in ``vidsearch/commands/<name>.py`` with ``add_parser(subparsers)`` and
``run(args) -> int``. Command modules import heavy libraries (torch, ray, faiss) inside ``run``,
so that ``vidsearch --help`` and argument errors stay instant.

Exit codes: 0 ok, 1 user error, 2 partial success (some videos failed: see ``failures``),
3 internal error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn

from vidsearch import __version__

EXIT_OK, EXIT_USER, EXIT_PARTIAL, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# Order is the order of `vidsearch --help`.
COMMANDS = ("demo", "ingest", "status", "index", "search", "sql", "serve", "weights", "doctor")


class UserError(Exception):
    """An error caused by the user's input; printed as one line, exit code 1."""


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; 2 means "partial success" here, so usage errors exit 1."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USER, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vidsearch", description="Search video libraries by meaning (InternVideo2 + FAISS + DuckDB)."
    )
    parser.add_argument("--version", action="version", version=f"vidsearch {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"vidsearch.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"vidsearch.commands.{name}":
                continue  # command not built yet
            raise
        module.add_parser(sub)
    # -v/-q also work after the subcommand (`vidsearch ingest DIR -q`); SUPPRESS keeps a value
    # given before the subcommand from being reset by the subparser's default.
    for p in sub.choices.values():
        p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more logging")
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="only warnings and errors on stderr")
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.INFO if verbose <= 1 else logging.DEBUG)
    if not quiet and verbose == 0:
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (tests call ``main([...])`` directly)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors: return the code, tests call main()
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USER
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USER
    _setup_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UserError as e:
        print(f"vidsearch: error: {e}", file=sys.stderr)
        return EXIT_USER
    except Exception as e:
        # Library errors (locked, wrong model, not a library) are the user's to fix: one line.
        from vidsearch.library import LibraryError

        user_errors: tuple[type[Exception], ...] = (LibraryError,)
        if "vidsearch.models" in sys.modules:  # only when a command loaded the models package
            from vidsearch.models import CheckpointError, WeightsNotFoundError

            user_errors += (CheckpointError, WeightsNotFoundError)
        if isinstance(e, user_errors):
            print(f"vidsearch: error: {e}", file=sys.stderr)
            return EXIT_USER
        raise


if __name__ == "__main__":  # pragma: no cover
    # Re-enter through the package so that exception classes are the ones commands raise.
    from vidsearch.cli import main as _main

    sys.exit(_main())
