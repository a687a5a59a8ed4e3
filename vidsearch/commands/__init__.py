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
