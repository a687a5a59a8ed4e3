"""Helpers shared by the fault tests: a small corpus and the environment of child processes."""

from __future__ import annotations

import os
from pathlib import Path

from media_tools import lavfi_video

REPO = Path(__file__).resolve().parents[2]


def make_corpus(folder: Path, prefix: str) -> Path:
    """Four small 10 fps videos of 1-3 clips each (4 s windows): ``<prefix>0.mp4`` .. ``<prefix>3.mp4``."""
    for i, (size, secs) in enumerate([("64x48", 6), ("80x48", 9), ("48x48", 3), ("64x64", 5)]):
        lavfi_video(folder / f"{prefix}{i}.mp4", size=size, seconds=secs, rate=10)
    return folder


def env_with_repo() -> dict[str, str]:
    """The environment for child processes: this checkout first on the path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
