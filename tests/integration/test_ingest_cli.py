"""``vidsearch ingest`` and ``vidsearch status`` as a newcomer meets them (issue 11).

* a mistyped path, a glob that matches nothing, a missing list file, an unknown model: one line,
  exit 1, at once, and no library folder is created;
* the library's model is the default for a later ingest, another one is refused before anything
  starts;
* no 0.1 s tail clips;
* output: start-up steps and progress lines when stderr is not a terminal, Ray's token notice
  gone, the test model named once; ``status`` with plurals, durations and ``runs.settings`` as an
  object.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from media_tools import TEST_MODEL, lavfi_video
from reliability.fault_tools import env_with_repo

from vidsearch.cli import main
from vidsearch.library import Library

LOCAL = ("--executor", "local", "--decode-workers", "1", "--no-index")


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli_videos")
    lavfi_video(d / "a.mp4", seconds=4.1, size="64x48", rate=10)   # 2-s clips: a 0.1 s tail
    lavfi_video(d / "b.mp4", seconds=3, size="48x48", rate=10)
    return d


@pytest.mark.parametrize(("inputs", "message"), [
    (["{d}/no_such_folder"], "no_such_folder: no such file or folder"),
    (["{d}/*.mkv"], "*.mkv: no file matches this pattern"),
    (["@{d}/no_list.txt"], "no_list.txt: no such file or folder"),
    (["{d}/a.mp4", "{d}/typo.mp4"], "typo.mp4: no such file or folder"),
])
def test_inputs_that_name_nothing_are_user_errors_and_create_nothing(
        videos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], inputs: list[str], message: str) -> None:
    lib = tmp_path / "lib"
    code = main(["ingest", *(i.format(d=videos) for i in inputs), "--library", str(lib), "--model", TEST_MODEL,
                 *LOCAL])
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not lib.exists()


def test_unknown_model_is_a_user_error(videos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["ingest", str(videos), "--library", str(tmp_path / "lib"), "--model", "internvideo2-typo", *LOCAL])
    err = capsys.readouterr().err
    assert code == 1 and "--model internvideo2-typo: unknown model" in err and TEST_MODEL in err
    assert not (tmp_path / "lib").exists()


@pytest.fixture(scope="module")
def lib(videos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    lib = tmp_path_factory.mktemp("cli_lib") / "lib"
    code = main(["-q", "ingest", str(videos / "a.mp4"), "--library", str(lib), "--model", TEST_MODEL,
                 "--clip-seconds", "2", *LOCAL])
    assert code == 0
    return lib


def test_no_tail_clip_of_a_tenth_of_a_second(lib: Path) -> None:
    with Library(lib).connect_catalog() as con:
        spans = con.execute("SELECT start_s, end_s, padded FROM clips ORDER BY start_s").fetchall()
    # 4.1 s in 2-s windows: [0, 2), [2, 4.1) -- not [2, 4) and a padded [4, 4.1).
    assert [(s, round(e, 3), p) for s, e, p in spans] == [(0.0, 2.0, False), (2.0, 4.1, False)]


def test_the_library_model_is_the_default_and_another_is_refused(
        lib: Path, videos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    lib = Path(shutil.copytree(lib, tmp_path / "lib"))
    capsys.readouterr()
    code = main(["-q", "ingest", str(videos / "b.mp4"), "--library", str(lib), "--json", *LOCAL])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["model"] == TEST_MODEL and out["videos_done"] == 1
    shards = Library(lib).read_manifest().shards
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # refused before any weights are looked for
    code = main(["ingest", str(videos), "--library", str(lib), "--model", "internvideo2-s2-1b", *LOCAL])
    err = capsys.readouterr().err
    assert code == 1 and f"holds embeddings of model {TEST_MODEL}" in err and "--new-index" in err, err
    assert "weights" not in err and Library(lib).read_manifest().shards == shards


def test_status_text_and_json(lib: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["status", "--library", str(lib), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    settings = st["runs"][0]["settings"]
    assert isinstance(settings, dict) and settings["model"] == TEST_MODEL and settings["clip_seconds"] == 2.0
    assert st["duration_s"] == pytest.approx(4.1, abs=0.01) and st["clips"] == 2
    assert main(["status", "--library", str(lib)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"\(generation \d+, 1 shard\)", text), text
    assert "clips   2 searchable (4 s of video)" in text and "ok: 2 clips," in text, text
    assert main(["status", "--help"]) == 0
    assert "Reads only" in capsys.readouterr().out


@pytest.mark.ray
def test_ray_ingest_says_what_it_does_and_shows_progress_without_a_terminal(videos: Path, tmp_path: Path) -> None:
    env = {**env_with_repo(), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "vidsearch.cli", "ingest", str(videos), "--library",
                        str(tmp_path / "lib"), "--model", TEST_MODEL, "--decode-workers", "1", "--no-index"],
                       capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    err = r.stderr
    lines = err.splitlines()
    assert "Token authentication" not in err and "RAY_AUTH_MODE" not in err and "Traceback" not in err, err
    assert sum("TEST MODEL" in line for line in lines) == 1, err  # said once, before anything starts
    steps = ["TEST MODEL", "found 2 videos", "starting Ray ...", "Ray ready", "loading model internvideo2-tiny",
             "model internvideo2-tiny ready", "2 videos to ingest", "ingest: 2/2 videos"]
    at = [next((i for i, line in enumerate(lines) if s in line), -1) for s in steps]
    assert -1 not in at and at == sorted(at), (steps, at, err)
    assert "vidsearch ingest: ok" in r.stdout and "2 videos seen: 2 done" in r.stdout, r.stdout
    assert os.path.isdir(tmp_path / "lib" / "shards")
