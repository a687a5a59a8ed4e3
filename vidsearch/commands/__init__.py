"""One module per ``vidsearch`` subcommand; shared argument helpers live here.

Each ``vidsearch/commands/<verb>.py`` has ``add_parser(subparsers)`` and ``run(args) -> int``
(see ``vidsearch/cli.py``). This package imports nothing heavy.
"""

from __future__ import annotations

import argparse
import os

LIBRARY_ENV = "VIDSEARCH_LIBRARY"


def add_library_argument(parser: argparse.ArgumentParser, help: str = "library folder") -> None:
    """Add ``--library DIR`` with ``$VIDSEARCH_LIBRARY`` as its default.

    Required only when the variable is unset; ``vidsearch.cli`` then names both ways in the error.
    """
    default = os.environ.get(LIBRARY_ENV) or None
    parser.add_argument("--library", metavar="DIR", default=default, required=default is None,
                        help=f"{help} (default: ${LIBRARY_ENV})")


def add_break_lock_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--break-lock`` to a writer command: accepted, and harmless.

    The writer lock is a kernel ``flock``: it is released when its holder dies, so there is no
    stale lock to break, and a live holder's lock is never taken over. Scripts still pass it.
    """
    parser.add_argument("--break-lock", action="store_true",
                        help="no longer needed, kept for compatibility: the kernel releases a dead writer's "
                             "lock, and a running writer's lock is never taken over")
