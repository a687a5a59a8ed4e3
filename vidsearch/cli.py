"""The ``vidsearch`` command: one entry point, one subcommand per verb.

Each subcommand lives in ``vidsearch/commands/<name>.py`` with ``add_parser(subparsers)`` and
``run(args) -> int``. Command modules import heavy libraries (torch, ray, faiss) inside ``run``,
so that ``vidsearch --help`` and argument errors stay instant.

Exit codes: 0 ok, 1 user error, 2 partial success (some videos failed: see ``failures``),
3 internal error, 130 interrupted, 141 stdout closed by its reader (``| head``; quiet).

A user error (bad input, a library problem, missing weights) is one line on stderr. An internal
error (a bug) is one line too, naming the log file that holds its traceback: ``LIBRARY/logs/``
for commands that write the library, else ``$XDG_CACHE_HOME/vidsearch/logs/`` (or the temp
folder); ``--debug`` prints the traceback instead. Read commands never write the library, not
even a crash log (README: "read commands do not write").
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import logging
import os
import platform
import select
import sys
import tempfile
import traceback
from pathlib import Path
from typing import NoReturn

from vidsearch import __version__
from vidsearch.commands import LIBRARY_ENV

EXIT_OK, EXIT_USER, EXIT_PARTIAL, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `yes | head -1`

# Order is the order of `vidsearch --help`.
COMMANDS = ("demo", "ingest", "status", "index", "search", "export", "eval", "tag", "sql", "serve", "weights",
            "doctor")


class UserError(Exception):
    """An error caused by the user's input; printed as one line, exit code 1."""


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; 2 means "partial success" here, so usage errors exit 1."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("the following arguments are required"):
            message = message.replace("--library", f"--library (or set {LIBRARY_ENV})")
        self.print_usage(sys.stderr)
        self.exit(EXIT_USER, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vidsearch", description="Search video libraries by meaning (InternVideo2 + FAISS + DuckDB)."
    )
    parser.add_argument("--version", action="version", version=f"vidsearch {__version__}")
    _add_output_options(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"vidsearch.commands.{name}").add_parser(sub)
    # -v/-q/--debug also work after the subcommand (`vidsearch ingest DIR -q`); SUPPRESS keeps a
    # value given before the subcommand from being reset by the subparser's default.
    for p in sub.choices.values():
        _add_output_options(p, argparse.SUPPRESS)
    return parser


def _add_output_options(p: argparse.ArgumentParser, default: object) -> None:
    top = default is None
    p.add_argument("-v", "--verbose", action="count", default=0 if top else default,
                   help="more logging: -v info, -vv debug")
    p.add_argument("-q", "--quiet", action="store_true", default=False if top else default,
                   help="only errors on stderr (no warnings, no progress)")
    p.add_argument("--debug", action="store_true", default=False if top else default,
                   help="print the traceback of an error on stderr (instead of writing it to a log file)")


def _setup_logging(verbose: int, quiet: bool) -> None:
    if quiet:
        level = logging.ERROR
    elif verbose == 0:
        level = logging.WARNING
    else:
        level = logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix (input, library state, weights): one line, exit 1.

    ``ValueError`` covers what fails to parse (times, sizes, SQL, JSON of a damaged file);
    ``FileNotFoundError`` a path that does not exist.
    """
    from vidsearch.library import LibraryError

    types: tuple[type[BaseException], ...] = (UserError, LibraryError, ValueError, FileNotFoundError)
    if "vidsearch.models" in sys.modules:  # only when a command loaded the models package
        from vidsearch.models import CheckpointError, WeightsNotFoundError

        types += (CheckpointError, WeightsNotFoundError)
    return types


def _writes_library(args: argparse.Namespace) -> bool:
    """Whether the command writes the library (a read command must not, not even a crash log)."""
    return args.command in ("ingest", "index", "demo", "tag") or \
        (args.command == "doctor" and bool(getattr(args, "fix", 0)))


def _crash_log_dirs(args: argparse.Namespace) -> list[Path]:
    dirs = []
    library = getattr(args, "library", None)
    if library and _writes_library(args) and Path(library).is_dir():
        dirs.append(Path(library) / "logs")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    dirs.append(Path(cache) / "vidsearch" / "logs")
    dirs.append(Path(tempfile.gettempdir()))
    return dirs


def write_crash_log(args: argparse.Namespace, exc: BaseException, argv: list[str]) -> Path | None:
    """Write ``exc``'s traceback (and what ran) to a new log file; returns its path, None if none could be written."""
    now = dt.datetime.now(dt.UTC)
    name = f"vidsearch-crash-{now:%Y%m%d-%H%M%S}-{os.getpid()}.log"
    text = "".join([
        f"vidsearch {__version__} internal error at {now.isoformat(timespec='seconds')}\n",
        f"command: vidsearch {' '.join(argv)}\n",
        f"python {platform.python_version()} on {platform.platform()}\n\n",
        *traceback.format_exception(exc),
    ])
    for d in _crash_log_dirs(args):
        try:
            d.mkdir(parents=True, exist_ok=True)
            if d.is_symlink():  # never follow a link planted in a library folder
                continue
            # O_EXCL + O_NOFOLLOW: a new file of ours, never a link someone prepared in a shared folder.
            fd = os.open(d / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError:
            continue
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(text)
        return d / name
    return None


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}{' ...' if len(lines) > 1 else ''}" if lines else type(exc).__name__


def _stdout_closed() -> int:
    """The reader of our output went away (``vidsearch sql ... | head -2``): stop quietly, as
    Unix tools do, instead of a BrokenPipeError traceback."""
    try:
        # Python flushes stdout again at exit and would report that failure too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # not a real file (tests capture stdout): nothing to silence
        pass
    return EXIT_BROKEN_PIPE


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (tests call ``main([...])`` directly)."""
    argv = sys.argv[1:] if argv is None else argv
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
        code = int(args.func(args))
        sys.stdout.flush()  # output that fit in the buffer meets a closed pipe only here
        return code
    except BrokenPipeError as e:
        if _stdout_is_broken():
            return _stdout_closed()
        return _failed(args, argv, e)  # a socket or a child's pipe, not our output: a real error
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        return _failed(args, argv, e)


def _stdout_is_broken() -> bool:
    """Whether our own output is the pipe that broke (its reader went away), as opposed to a
    socket or a child process's pipe that raised ``BrokenPipeError`` inside a command."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a real file (tests capture stdout)
        return False
    # The write end of a pipe whose reader has gone polls as an error (Linux, BSD, macOS); a file,
    # a terminal or a live pipe do not.
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))


def _failed(args: argparse.Namespace, argv: list[str], e: BaseException) -> int:
    """Exit code and message for an exception out of a command: user errors one line (1),
    anything else an internal error (3) with its traceback in a log file or on --debug."""
    if isinstance(e, _user_error_types()):
        print(f"vidsearch: error: {e}", file=sys.stderr)
        if args.debug:
            traceback.print_exc()
        else:
            logging.getLogger(__name__).debug("traceback of the error above", exc_info=True)
        return EXIT_USER
    # A bug: one line, the traceback where the user can attach it to a report.
    if args.debug:
        traceback.print_exc()
        print(f"vidsearch: internal error: {_one_line(e)}", file=sys.stderr)
        return EXIT_INTERNAL
    log = write_crash_log(args, e, argv)
    where = f"traceback in {log}" if log else "rerun with --debug for the traceback"
    print(f"vidsearch: internal error: {_one_line(e)} ({where}; this is a bug, please report it)",
          file=sys.stderr)
    return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    # Re-enter through the package so that exception classes are the ones commands raise.
    from vidsearch.cli import main as _main

    sys.exit(_main())
