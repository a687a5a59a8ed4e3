"""Discovery stores absolute paths, whatever form the user typed them in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vidsearch.pipeline.discover import discover

EXTS = (".mp4",)


def test_relative_folder_glob_and_list_give_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "v").mkdir()
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / "v" / name).write_bytes(os.urandom(64))
    (tmp_path / "list.txt").write_text("v/a.mp4\n")
    monkeypatch.chdir(tmp_path)
    for inputs in (["v"], ["v/*.mp4"], ["./v/../v/a.mp4"], ["@list.txt"]):
        got = discover(inputs, EXTS, fingerprint=False).tasks
        assert got, inputs
        for t in got:
            assert os.path.isabs(t.path_bytes) and os.path.isabs(t.display_path), (inputs, t)
            assert Path(os.fsdecode(t.path_bytes)).parent == tmp_path / "v"
