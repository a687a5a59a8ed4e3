"""Thumbnails of every clip, tail clips included, from a real ingest of ffmpeg-made videos.

A tail clip can span past the video's last frame (a 0.1 s remainder, one frame repeated): the
middle of its span is no frame at all, and ffmpeg asked to seek there writes nothing (issue 11
item 14: a 503 from the API, a broken image, a WARNING from ``--thumbnails``). Thumbnails are
taken at one of the clip's sampled frames, which were decoded at ingest.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from media_tools import TEST_MODEL, lavfi_video

from vidsearch.cli import main
from vidsearch.library import Library
from vidsearch.search.output import FrameRef, make_thumbnails, thumbnail_frames
from vidsearch.search.sandbox import open_sandbox, run_query


@pytest.fixture(scope="module")
def tail_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("thumbs")
    media = base / "media"
    media.mkdir()
    lavfi_video(media / "tail_4.1s.mp4", rate=10, seconds=4.1)     # 4 s clips: a 0.1 s tail
    lavfi_video(media / "one_frame.mp4", rate=10, seconds=1, extra=("-frames:v", "1"))
    lavfi_video(media / "short_0.5s.mp4", rate=10, seconds=0.5)
    lib = base / "lib"
    assert main(["-q", "ingest", str(media), "--library", str(lib), "--model", TEST_MODEL, "--executor", "local",
                 "--clip-seconds", "4", "--stride", "4"]) == 0
    return lib


def test_every_clip_gets_a_thumbnail(tail_library: Path, caplog: pytest.LogCaptureFixture) -> None:
    lib = Library(tail_library)
    con = open_sandbox(lib, history=False)
    try:
        clips = run_query(con, "SELECT clips.clip_id, clips.start_s, clips.end_s, videos.duration_s "
                               "FROM clips JOIN videos USING (video_id)").to_pylist()
        frames = thumbnail_frames(con, [c["clip_id"] for c in clips])
    finally:
        con.close()
    assert len(frames) == len(clips) >= 3
    # Some clip reaches past the last frame, where the old thumbnail time (mid-span) had no frame.
    assert any((c["start_s"] + c["end_s"]) / 2 > c["duration_s"] - 0.1 for c in clips), clips
    with caplog.at_level(logging.WARNING):
        made = make_thumbnails(lib, frames)
    assert not [r for r in caplog.records if "thumbnail" in r.getMessage()]
    for clip_id, path in made.items():
        assert path is not None and path.read_bytes()[:2] == b"\xff\xd8", clip_id  # a JPEG
        assert path.parent == lib.thumbs_dir
    assert not list(lib.tmp_dir.glob("thumb-*")) and not list(lib.thumbs_dir.glob(".*"))  # no temp files left


def test_a_failed_thumbnail_is_one_line(tail_library: Path, caplog: pytest.LogCaptureFixture) -> None:
    lib = Library(tail_library)
    video = next((tail_library.parent / "media").glob("tail_*.mp4"))
    with caplog.at_level(logging.WARNING):
        made = make_thumbnails(lib, {123: FrameRef(str(video), 30.0, 10.0),   # past the end: no frame
                                     456: FrameRef(str(video.with_name("gone.mp4")), 1.0, 10.0)})
    assert made == {123: None, 456: None}
    msgs = [r.getMessage() for r in caplog.records if "no thumbnail" in r.getMessage()]
    assert len(msgs) == 2
    for m in msgs:
        assert "\n" not in m and "-frames:v" not in m and "ffmpeg-" not in m, m  # not the command line
    assert "00:00:30.000" in msgs[0]


def test_search_thumbnails_cli(tail_library: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lib = Library(tail_library)
    con = open_sandbox(lib, history=False)
    try:
        cid = run_query(con, "SELECT clip_id FROM clips ORDER BY end_s DESC LIMIT 1").column(0)[0].as_py()
    finally:
        con.close()
    assert main(["search", "--like", str(cid), "--library", str(tail_library), "--thumbnails", "--no-history",
                 "-k", "5", "--no-merge"]) == 0
    out, err = capsys.readouterr()
    assert out.count("thumbnail ") >= 2 and "WARNING" not in err


def test_thumbnails_in_a_read_only_library_are_one_line_exit_1(tail_library: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """D3: thumbs/ cannot be written (EROFS, EACCES; simulated: root may write through chmod)."""
    import os

    lib = Library(tail_library)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **kw: False if Path(p) == lib.thumbs_dir and mode & os.W_OK
                        else real_access(p, mode, *a, **kw))
    con = open_sandbox(lib, history=False)
    try:
        cid = run_query(con, "SELECT clip_id FROM clips LIMIT 1").column(0)[0].as_py()
    finally:
        con.close()
    assert main(["search", "--like", str(cid), "--library", str(tail_library), "--thumbnails", "--no-history"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vidsearch: error: --thumbnails: cannot write thumbnails: {lib.thumbs_dir} is read-only"], err
