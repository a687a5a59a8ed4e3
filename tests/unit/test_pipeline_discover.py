"""Discovery stores absolute paths, whatever form the user typed them in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vidsearch.pipeline.discover import InputError, check_inputs, discover

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


def test_check_inputs_refuses_inputs_that_name_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(os.urandom(64))
    monkeypatch.chdir(tmp_path)
    for bad, message in ((["v/nope.mp4"], "v/nope.mp4: no such file or folder"),
                         (["v/*.mkv"], "v/*.mkv: no file matches this pattern"),
                         (["@missing.txt"], "@missing.txt: no such file or folder")):
        with pytest.raises(InputError, match=message.replace("*", r"\*")):
            check_inputs(bad)
    assert check_inputs(["v/*.mp4", "v"]) == [os.fsencode(tmp_path / "v" / "a.mp4"), os.fsencode(tmp_path / "v")]


def test_list_entries_may_be_missing_and_are_never_globbed(tmp_path: Path) -> None:
    """A list file is data: a missing entry becomes a NotFound row, not a user error, and an
    entry with glob characters names one file."""
    (tmp_path / "a.mp4").write_bytes(os.urandom(64))
    (tmp_path / "list.txt").write_text("a.mp4\ngone.mp4\n*.mp4\n")
    paths = check_inputs([f"@{tmp_path / 'list.txt'}"])
    assert paths == [os.fsencode(tmp_path / n) for n in ("a.mp4", "gone.mp4", "*.mp4")]
    found = discover(paths, EXTS, fingerprint=False, expand=False)
    assert [t.path_bytes for t in found.tasks] == [os.fsencode(tmp_path / "a.mp4")]
    assert sorted((f.path_bytes, f.error_type) for f in found.failures) == [
        (os.fsencode(tmp_path / "*.mp4"), "NotFound"), (os.fsencode(tmp_path / "gone.mp4"), "NotFound")]
