"""Resume rules with ``--speech`` (issue 14): kills at crash points and while a video is being
transcribed lose nothing committed, the rerun ends with the same tables as a clean run (clips,
videos, transcripts, text status) and a further run redoes nothing; a speech worker that dies on
every try of a video ends as a ``WorkerKilled`` failure of the speech stage, the clips kept.

Kills need a separate driver process: the CLI runs as a subprocess (local executor).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from media_tools import TEST_MODEL, lavfi_video
from reliability.invariants import assert_same_library, check_library
from speech_tools import need_espeak, speech_video, whisper_test_model

from vidsearch.library import Library
from vidsearch.pipeline.runner import IngestOptions, run_ingest
from vidsearch.schemas.config import IngestCfg

pytestmark = pytest.mark.reliability

COMMON = ("--executor", "local", "--decode-workers", "1", "--shard-rows", "3", "--batch-size", "4", "--speech")


def cmd(*args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "vidsearch.cli", "-q", "ingest", *map(str, args), "--model", TEST_MODEL,
            *COMMON, "--speech-model", str(whisper_test_model())]


def cli(*args: str | os.PathLike[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd(*args), capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_espeak()
    root = tmp_path_factory.mktemp("speech_faults")
    d = root / "videos"
    d.mkdir()
    speech_video(d / "talk.mp4", [(1.0, "The children built a large sandcastle on the beach."),
                                  (7.0, "A small airplane landed safely in the field.")], seconds=11, workdir=root)
    lavfi_video(d / "mute.mp4", seconds=6, rate=10)
    (d / "mute.srt").write_text("1\n00:00:01,000 --> 00:00:02,500\nThe lighthouse keeper waves\n\n")
    lavfi_video(d / "other.mp4", seconds=9, rate=10, size="80x48")
    return d


@pytest.fixture(scope="module")
def clean(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    lib = tmp_path_factory.mktemp("clean") / "lib"
    r = cli(corpus, "--library", lib)
    assert r.returncode == 0, r.stderr[-2000:]
    check_library(lib)
    return lib


def text_tables(lib: Path) -> dict[str, list[tuple[Any, ...]]]:
    with Library(lib).connect_catalog() as con:
        return {
            "transcripts": sorted(con.execute(
                "SELECT video_id, segment_id, round(start_s, 3), round(end_s, 3), text, source, track, model "
                "FROM transcripts").fetchall()),
            "text_status": sorted(con.execute(
                "SELECT video_id, kind, status, model, segments, error_type, attempts FROM text_status").fetchall()),
        }


def assert_same(lib: Path, clean: Path) -> None:
    check_library(lib)
    assert_same_library(lib, clean)
    assert text_tables(lib) == text_tables(clean)


def assert_rerun_is_a_no_op(corpus: Path, lib: Path) -> None:
    shards = Library(lib).read_manifest().shards
    r = cli(corpus, "--library", lib)
    assert r.returncode == 0, r.stderr[-2000:]
    assert Library(lib).read_manifest().shards == shards


@pytest.mark.parametrize("point", ["after_rename_before_manifest", "after_commit_catalog_behind"])
def test_kill_at_a_crash_point_then_resume(point: str, corpus: Path, clean: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    r = cli(corpus, "--library", lib, env={"VIDSEARCH_CRASH_AT": point})
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    committed = {s.shard_id: s.files() for s in Library(lib).read_manifest().shards}
    r = cli(corpus, "--library", lib)
    assert r.returncode == 0, r.stderr[-2000:]
    m = Library(lib).read_manifest()
    assert all(any(s.shard_id == k and s.files() == v for s in m.shards) for k, v in committed.items())
    assert_same(lib, clean)
    assert_rerun_is_a_no_op(corpus, lib)


def test_sigkill_while_transcribing_then_resume(corpus: Path, clean: Path, tmp_path: Path) -> None:
    lib, marks = tmp_path / "lib", tmp_path / "marks"
    marks.mkdir()
    env = {**os.environ, "VIDSEARCH_TEST_SPEECH_FAULT": f"slow=120:talk.mp4|marks={marks}"}
    p = subprocess.Popen(cmd(corpus, "--library", lib, "--commit-interval", "0.5"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not any(marks.iterdir()) and p.poll() is None:
            time.sleep(0.1)
        assert any(marks.iterdir()), "the speech hook never fired"
        # The other videos are settled and committed meanwhile; talk.mp4 waits for its transcript.
        while time.monotonic() < deadline and p.poll() is None:
            m = Library(lib).read_manifest() if Library(lib).exists() else None
            if m is not None and sum(s.videos_rows for s in m.shards) >= 2:
                break
            time.sleep(0.1)
        p.kill()
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    with Library(lib).connect_catalog() as con:
        assert con.execute("SELECT count(*) FROM transcripts WHERE source = 'speech'").fetchone() == (0,)
    r = cli(corpus, "--library", lib)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same(lib, clean)
    assert_rerun_is_a_no_op(corpus, lib)


@pytest.mark.ray
def test_speech_worker_killed_on_every_try_fails_the_stage_only(corpus: Path, tmp_path: Path, ray_session: None,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDSEARCH_TEST_SPEECH_FAULT", "exit:talk.mp4")
    lib = tmp_path / "lib"
    s = run_ingest([str(corpus)], lib, IngestCfg(decode_workers=1, batch_size=8),
                   IngestOptions(model=TEST_MODEL, progress=False, build_index=False, speech=True,
                                 speech_model=str(whisper_test_model())))
    assert s.exit_code == 2 and s.videos_done == 3 and s.speech_failed == 1
    assert [(f["stage"], f["error_type"]) for f in s.failures] == [("speech", "WorkerKilled")]
    with Library(lib).connect_catalog() as con:
        assert con.execute("SELECT count(*) FROM videos WHERE status = 'done'").fetchone() == (3,)
        assert con.execute("SELECT stage, error_type FROM failures").fetchall() == [("speech", "WorkerKilled")]
    check_library(lib)
