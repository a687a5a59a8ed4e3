"""Helpers shared by the fault tests: the environment of child processes.

The corpus and the clean library they share are session fixtures of ``tests/conftest.py``
(``fault_corpus``, ``clean_library``).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def env_with_repo() -> dict[str, str]:
    """The environment for child processes: this checkout first on the path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
