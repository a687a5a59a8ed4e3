"""RELIABILITY.md §8.1: every bad input becomes a clear failure row; the rest is ingested.

One ingest run (local executor, real decode children, tiny model) over the ``bad_inputs``
folder; each test checks one row of the table against the catalog.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import av
import pytest
from reliability.invariants import check_library

from vidsearch.library import Library
from vidsearch.pipeline.runner import IngestOptions, IngestSummary, run_ingest
from vidsearch.schemas.config import IngestCfg

pytestmark = pytest.mark.reliability

MODEL = "internvideo2-tiny"


def ingest(inputs: list[Any], lib: Path, executor: str = "local", **opts: Any) -> IngestSummary:
    cfg = IngestCfg(decode_workers=1, decode_timeout_s=opts.pop("timeout", 60.0),
                    **{k: opts.pop(k) for k in list(opts) if k in IngestCfg.__dataclass_fields__})
    o = IngestOptions(model=MODEL, executor=executor, build_index=False, progress=False, **opts)
    return run_ingest(inputs, lib, cfg, o)


@pytest.fixture(scope="module")
def bad_run(bad_inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    lib = tmp_path_factory.mktemp("badlib") / "lib"
    summary = ingest([os.fsencode(bad_inputs["dir"])], lib)
    with Library(lib).connect_catalog() as con:
        cur = con.execute("SELECT * FROM videos")
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        clips = con.execute("SELECT video_id, start_s, end_s, frame_indices, frame_times_s, padded "
                            "FROM clips ORDER BY video_id, clip_index").fetchall()
    by_path = {bytes(r["path_bytes"]): r for r in rows}
    return {"summary": summary, "lib": lib, "rows": by_path, "clips": clips}


def _row(run: dict[str, Any], p: Path) -> dict[str, Any]:
    key = os.fsencode(p)
    assert key in run["rows"], f"no video row for {p}; rows: {sorted(run['rows'])}"
    return run["rows"][key]


def _clips(run: dict[str, Any], video_id: str) -> list[tuple[Any, ...]]:
    return [c for c in run["clips"] if c[0] == video_id]


def test_run_completes_partial_and_invariants_hold(bad_run: dict[str, Any], bad_inputs: dict[str, Path]) -> None:
    s = bad_run["summary"]
    assert s.exit_code == 2
    check_library(bad_run["lib"])
    good = _row(bad_run, bad_inputs["good"])
    assert good["status"] == "done" and good["num_clips"] == 2 and good["coverage"] == 1.0


@pytest.mark.parametrize(("row_id", "stage", "error_type"), [
    ("B1", "probe", "EmptyFile"),
    ("B2", "probe", "CorruptContainer"),
    ("B5", "probe", "NotAVideo"),
    ("B6", "probe", "NotAVideo"),
    ("B8", "probe", "NotAVideo"),
    ("B9", "probe", "NoVideoStream"),
    ("B18_dangling", "discover", "NotFound"),
])
def test_failure_rows(bad_run: dict[str, Any], bad_inputs: dict[str, Path], row_id: str, stage: str,
                      error_type: str) -> None:
    r = _row(bad_run, bad_inputs[row_id])
    assert (r["status"], r["stage"], r["error_type"]) == ("failed", stage, error_type), r
    assert r["num_clips"] == 0 and not _clips(bad_run, r["video_id"])
    assert bad_inputs[row_id].name in r["error_message"] and "\n" not in r["error_message"]


def test_b3_truncated_faststart_is_partial_never_done(bad_run: dict[str, Any], bad_inputs: dict[str, Path]) -> None:
    r = _row(bad_run, bad_inputs["B3"])
    assert r["status"] in ("partial", "failed"), r
    if r["status"] == "partial":
        assert r["coverage"] < 0.95 and r["error_type"] == "PartialDecode"
        for _, _, end_s, *_ in _clips(bad_run, r["video_id"]):
            assert end_s <= r["duration_s"] + 1e-6


def test_b4_zeroed_bytes_never_done_with_missing_frames(bad_run: dict[str, Any], bad_inputs: dict[str, Path]) -> None:
    r = _row(bad_run, bad_inputs["B4"])
    assert r["status"] in ("done", "partial", "failed")
    if r["status"] == "done":
        assert r["coverage"] >= 0.95 and r["num_clips"] == 1


def test_b7_content_sniffing_finds_renamed_videos(bad_run: dict[str, Any], bad_inputs: dict[str, Path],
                                                   tmp_path: Path) -> None:
    for key in ("B7_txt", "B7_noext"):
        assert _row(bad_run, bad_inputs[key])["status"] == "done"
    # --no-sniff: only extensions count, so neither is discovered; --ext .txt picks the .txt one.
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(bad_inputs["B7_txt"], d / "a.txt")
    shutil.copy(bad_inputs["B7_noext"], d / "noext")
    s = ingest([d], tmp_path / "l1", sniff=False)
    assert s.videos_seen == 0
    s = ingest([d], tmp_path / "l2", sniff=False, extensions=(".txt",))
    assert (s.videos_seen, s.videos_done) == (1, 1)


@pytest.mark.parametrize("row_id", ["B10_av1", "B10_hevc", "B10_vp9"])
def test_b10_codecs_decode_or_name_the_codec(bad_run: dict[str, Any], bad_inputs: dict[str, Path], row_id: str) -> None:
    r = _row(bad_run, bad_inputs[row_id])
    if r["status"] == "failed":
        assert r["error_type"] == "UnsupportedCodec" and r["codec"] in r["error_message"]
    else:
        assert r["status"] == "done" and r["num_clips"] == 1


def test_b11_one_frame_padded(bad_run: dict[str, Any], bad_inputs: dict[str, Path]) -> None:
    r = _row(bad_run, bad_inputs["B11"])
    assert r["status"] == "done" and r["frame_count"] == 1
    (clip,) = _clips(bad_run, r["video_id"])
    assert list(clip[3]) == [0, 0, 0, 0] and clip[5] is True


def test_b12_short_video_one_clip(bad_run: dict[str, Any], bad_inputs: dict[str, Path]) -> None:
    r = _row(bad_run, bad_inputs["B12"])
    (clip,) = _clips(bad_run, r["video_id"])
    assert clip[1] == 0.0 and clip[2] == pytest.approx(0.5, abs=0.04) and clip[2] <= r["duration_s"]
    assert list(clip[3]) == [0, 3, 6, 9]


def test_b15_vfr_times_match_pyav_oracle(bad_run: dict[str, Any], bad_inputs: dict[str, Path]) -> None:
    r = _row(bad_run, bad_inputs["B15"])
    with av.open(str(bad_inputs["B15"])) as c:
        times = [float(f.time) for f in c.decode(video=0)]
    t0 = times[0]
    oracle = [t - t0 for t in times]
    clips = _clips(bad_run, r["video_id"])
    assert len(clips) == 1 + int(oracle[-1] // 4.0)
    for _, start_s, _, idx, ts, _ in clips:
        assert start_s == pytest.approx(oracle[idx[0]], abs=1e-6)
        assert list(ts) == pytest.approx([oracle[i] for i in idx], abs=1e-6)


@pytest.mark.parametrize("deg", [90, 180, 270])
def test_b16_rotation_recorded_and_display_size(bad_run: dict[str, Any], bad_inputs: dict[str, Path], deg: int) -> None:
    r = _row(bad_run, bad_inputs[f"B16_{deg}"])
    assert r["status"] == "done" and r["rotation"] == deg
    assert (r["width"], r["height"]) == ((64, 96) if deg in (90, 270) else (96, 64))


@pytest.mark.parametrize("row_id", ["B17_bytes", "B17_newline", "B17_dash"])
def test_b17_odd_names_round_trip(bad_run: dict[str, Any], bad_inputs: dict[str, Path], row_id: str) -> None:
    r = _row(bad_run, bad_inputs[row_id])
    assert r["status"] == "done"
    assert bytes(r["path_bytes"]) == os.fsencode(bad_inputs[row_id])


def test_b18_links_loop_and_alias(bad_run: dict[str, Any], bad_inputs: dict[str, Path]) -> None:
    # The loop terminated (we got here), the alias and the copy are the same video as good.mp4.
    good = _row(bad_run, bad_inputs["good"])
    rows = [r for r in bad_run["rows"].values() if r["video_id"] == good["video_id"]]
    assert len(rows) == 1
    assert bad_run["summary"].videos_duplicate >= 1  # B19: the same content at two paths


def test_b22_special_files_never_block(bad_run: dict[str, Any], bad_inputs: dict[str, Path]) -> None:
    for key in ("B22_fifo", "B22_devzero", "B22_dir"):
        assert os.fsencode(bad_inputs[key]) not in bad_run["rows"]
    assert bad_run["summary"].not_regular >= 2
    r = _row(bad_run, bad_inputs["B22_unreadable"])
    if os.geteuid() == 0:
        assert r["status"] == "done"  # root reads mode-000 files; PermissionDenied needs a user
    else:
        assert (r["status"], r["error_type"]) == ("failed", "PermissionDenied")


def test_rerun_retries_transient_failures_then_is_a_noop(bad_run: dict[str, Any],
                                                        bad_inputs: dict[str, Path]) -> None:
    lib = Library(bad_run["lib"])
    # Rerun 1: only the transient failure (NotFound: a dangling link may be fixed) is retried.
    s = ingest([os.fsencode(bad_inputs["dir"])], bad_run["lib"])
    assert (s.videos_done, s.videos_failed, s.clips, s.exit_code) == (0, 1, 0, 2)
    before = lib.read_manifest()
    # Rerun 2: it failed twice, so it is quarantined; nothing is written at all.
    s = ingest([os.fsencode(bad_inputs["dir"])], bad_run["lib"])
    assert (s.videos_done, s.videos_failed, s.clips, s.videos_quarantined, s.exit_code) == (0, 0, 0, 1, 2)
    assert lib.read_manifest().shards == before.shards
    r = _row({"rows": _rows(lib)}, bad_inputs["B18_dangling"])
    assert r["attempts"] == 2
    check_library(bad_run["lib"])


def _rows(lib: Library) -> dict[bytes, dict[str, Any]]:
    with lib.connect_catalog() as con:
        cur = con.execute("SELECT * FROM videos")
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    return {bytes(r["path_bytes"]): r for r in rows}
