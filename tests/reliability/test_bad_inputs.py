"""docs/RELIABILITY.md §8.1: every bad input becomes a clear failure row; the rest is ingested.

One ingest run (local executor, real decode children, tiny model) over the ``bad_inputs``
folder; each test checks one row of the table against the catalog.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from media_tools import ffmpeg, lavfi_video
from reliability.invariants import check_library

from vidsearch.library import Library
from vidsearch.pipeline.runner import IngestOptions, IngestSummary, run_ingest
from vidsearch.schemas.config import IngestCfg

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
    # Really variable: frames 20, 40 and 60 ms apart (a constant 40 ms would test nothing).
    assert {round(b - a, 3) for a, b in zip(oracle, oracle[1:], strict=False)} == {0.02, 0.04, 0.06}
    clips = _clips(bad_run, r["video_id"])
    assert len(clips) == 1 + int(oracle[-1] // 4.0)
    for _, start_s, _, idx, ts, _ in clips:
        # Stored to the millisecond (issue 11 item 15), the frames' own times rounded.
        assert start_s == pytest.approx(round(oracle[idx[0]], 3), abs=1e-9)
        assert list(ts) == pytest.approx([round(oracle[i], 3) for i in idx], abs=1e-9)


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


# ---------------------------------------------------------------------------------------------
# B13, B21, B23 and S7's probe limits: one CLI run (in-process, local executor) over a folder of
# oversized, over-claiming and bomb-like files. The frame limit is lowered to 10,000 so that a
# 20,000-frame bomb is cheap to make; the 10^6-frame bomb under the default limit is slow-tier.
# ---------------------------------------------------------------------------------------------
def _edit_over_claim_mp4(src: Path, dst: Path, factor: int) -> int:
    """Copy ``src`` (one stts entry) with the stts sample count multiplied: the container then
    claims ``factor`` times the frames it holds (decord #373). Returns the true frame count."""
    d = bytearray(src.read_bytes())
    i = d.find(b"stts")
    n_entries = struct.unpack(">I", d[i + 8: i + 12])[0]
    assert n_entries == 1, n_entries
    count = struct.unpack(">I", d[i + 12: i + 16])[0]
    struct.pack_into(">I", d, i + 12, count * factor)
    dst.write_bytes(bytes(d))
    return count


def _edit_avi_dims(src: Path, dst: Path, width: int, height: int) -> None:
    """Copy an AVI with its declared frame size (avih and the stream's BITMAPINFOHEADER) replaced."""
    d = bytearray(src.read_bytes())
    a = d.find(b"avih")
    struct.pack_into("<II", d, a + 8 + 32, width, height)
    s = d.find(b"strf")
    struct.pack_into("<ii", d, s + 8 + 4, width, height)
    dst.write_bytes(bytes(d))


def _edit_avi_length(src: Path, dst: Path, frames: int) -> None:
    """Copy an AVI whose headers (avih dwTotalFrames, strh dwLength) claim ``frames`` frames."""
    d = bytearray(src.read_bytes())
    struct.pack_into("<I", d, d.find(b"avih") + 8 + 16, frames)
    struct.pack_into("<I", d, d.find(b"strh") + 8 + 32, frames)
    dst.write_bytes(bytes(d))


@pytest.fixture(scope="module")
def limit_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("limits")
    src = d.parent / f"{d.name}_src"
    src.mkdir()
    v: dict[str, Path] = {"dir": d}
    v["good"] = lavfi_video(d / "good.mp4", size="64x48", seconds=2, rate=10)
    # B13: 8K, 4 frames, and 16K-wide (16K UHD), 1 frame: upscaled small patterns compress to KBs.
    v["B13_8k"] = d / "b13_8k.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x90:rate=2:duration=2", "-vf",
           "scale=7680:4320:flags=neighbor", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "40",
           "-pix_fmt", "yuv420p", v["B13_8k"])
    v["B13_16k"] = d / "b13_16k.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:size=15360x8640:rate=1", "-frames:v", "1", "-c:v", "libx264",
           "-preset", "ultrafast", "-pix_fmt", "yuv420p", v["B13_16k"])
    # B21: containers that claim ten times the frames they hold (mp4 stts; AVI headers).
    base = lavfi_video(src / "base.mp4", size="64x48", seconds=6, rate=10, extra=("-g", "10"))
    v["B21_mp4"] = d / "b21_over_stts.mp4"
    assert _edit_over_claim_mp4(base, v["B21_mp4"], 10) == 60
    avi = src / "base.avi"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10:duration=6", "-c:v", "mpeg4", "-g", "10", avi)
    v["B21_avi"] = d / "b21_over_length.avi"
    _edit_avi_length(avi, v["B21_avi"], 600)
    # B23 / S7: 50 video streams; 1 video + 99 audio streams.
    v["B23_streams"] = d / "b23_50_video_streams.mkv"
    ffmpeg("-i", base, *[a for _ in range(50) for a in ("-map", "0:v")], "-c", "copy", v["B23_streams"])
    sine = src / "sine.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", sine)
    v["S7_streams"] = d / "s7_100_streams.mkv"
    ffmpeg("-i", base, "-i", sine, "-map", "0:v", *[a for _ in range(99) for a in ("-map", "1:a")],
           "-c", "copy", v["S7_streams"])
    # B23: 1x1 px, 20,000 frames (limit 10,000 in this run): matroska claims no count, so only
    # the probe's counting demux can stop it; and an mp4 whose claim alone is over the limit.
    v["B23_frames"] = d / "b23_1x1_20k_frames.mkv"
    ffmpeg("-f", "lavfi", "-i", "color=c=red:size=1x1:rate=1000", "-frames:v", "20000", "-c:v", "ffv1",
           v["B23_frames"])
    v["B23_claim"] = d / "b23_claims_30k_frames.mp4"
    _edit_over_claim_mp4(base, v["B23_claim"], 500)
    # S7: corrupted headers declaring huge frames: 8000x8000 (past --max-pixels), 60000x60000
    # (past ffmpeg's own size check), and an MJPEG whose bitstream (64x48) contradicts its header.
    raw = src / "raw.avi"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=16x16:rate=10:duration=1", "-c:v", "rawvideo", "-pix_fmt", "gray", raw)
    v["S7_dims_8000"] = d / "s7_header_8000x8000.avi"
    _edit_avi_dims(raw, v["S7_dims_8000"], 8000, 8000)
    v["S7_dims_60000"] = d / "s7_header_60000x60000.avi"
    _edit_avi_dims(raw, v["S7_dims_60000"], 60000, 60000)
    mj = src / "mj.avi"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10:duration=1", "-c:v", "mjpeg", mj)
    v["S7_dims_mjpeg"] = d / "s7_mjpeg_header_30000.avi"
    _edit_avi_dims(mj, v["S7_dims_mjpeg"], 30000, 30000)
    # Rule 2 (coverage from the container's metadata) on Matroska, which counts no frames: cut
    # at 45 %; 10 % zeroed mid-file; and two that must stay "done": variable frame rate with a
    # 2 s still stretch, and an audio track 0.6 s longer than the video.
    mkv = lavfi_video(src / "r2.mkv", size="96x64", rate=25, seconds=4, extra=("-g", "25"))
    data = mkv.read_bytes()
    v["R2_cut"] = d / "r2_cut.mkv"
    v["R2_cut"].write_bytes(data[: int(len(data) * 0.45)])
    v["R2_hole"] = d / "r2_hole.mkv"
    n = len(data)
    v["R2_hole"].write_bytes(data[: n // 2] + bytes(n // 10) + data[n // 2 + n // 10:])
    v["R2_still"] = d / "r2_vfr_still.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25:duration=4", "-vf",
           "setpts='if(lt(N\\,50)\\,N/25\\,N/25+2)/TB'", "-fps_mode", "vfr", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-g", "25", v["R2_still"])
    v["R2_audio"] = d / "r2_audio_longer.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25:duration=4", "-f", "lavfi", "-i",
           "sine=duration=4.6", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "25", "-c:a", "aac", v["R2_audio"])
    return v


def _status_of(path: Path) -> dict[str, int]:
    out = {}
    for line in Path("/proc", str(path), "status").read_text().splitlines():
        k, _, val = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(val.split()[0]) * 1024
    return out


@pytest.fixture(scope="module")
def limits_run(limit_inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,
               bad_run: dict[str, Any]) -> dict[str, Any]:
    from vidsearch.cli import main

    lib = tmp_path_factory.mktemp("limitslib") / "lib"
    # bad_run has warmed this process up (imports, model): the parent's RSS below measures the
    # bad files, not start-up.
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS) of this process
    before = _status_of(Path("self"))["VmRSS"]
    t0 = time.monotonic()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["-q", "ingest", str(limit_inputs["dir"]), "--library", str(lib), "--model", MODEL,
                   "--executor", "local", "--decode-workers", "1", "--no-index", "--json",
                   "--max-frames", "10000"])
    elapsed = time.monotonic() - t0
    peak = _status_of(Path("self"))["VmHWM"]
    summary = json.loads(out.getvalue())
    return {"rc": rc, "summary": summary, "lib": lib, "rows": _rows(Library(lib)), "elapsed": elapsed,
            "parent_growth": peak - before, "clips": _clip_rows(Library(lib))}


def _clip_rows(lib: Library) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    with lib.connect_catalog() as con:
        for vid, idx, start, end in con.execute(
                "SELECT video_id, frame_indices, start_s, end_s FROM clips ORDER BY video_id, clip_index").fetchall():
            out.setdefault(vid, []).append((list(idx), start, end))
    return out


@pytest.mark.parametrize(("row_id", "status", "coverage", "why"), [
    ("R2_cut", "partial", 0.42, "the container declares 4.00 s, the frames reach 1.68 s"),
    ("R2_hole", "partial", 0.74, "the demuxer reported 1 error(s) and ~26 frames are missing"),
    ("R2_still", "done", 1.0, None),
    ("R2_audio", "done", 1.0, None),
])
def test_rule2_matroska_coverage_from_declared_duration_and_gaps(limits_run: dict[str, Any],
                                                                 limit_inputs: dict[str, Path], row_id: str,
                                                                 status: str, coverage: float, why: str | None) -> None:
    """Matroska has no frame count: a cut file or a damaged cluster demuxes cleanly into fewer
    frames ([M] 15 of 40 damaged Matroska mutants were "done" before this). The declared
    duration and the timestamp gaps around demuxer errors give the missing frames; variable
    frame rate and a longer audio track alone do not."""
    r = _row(limits_run, limit_inputs[row_id])
    assert (r["status"], r["coverage"]) == (status, pytest.approx(coverage, abs=0.011)), r
    if why:
        assert r["error_type"] == "PartialDecode" and why in r["error_message"], r["error_message"]


def test_limits_run_completes_in_bounded_time_and_parent_memory(limits_run: dict[str, Any]) -> None:
    assert limits_run["rc"] == 2 and limits_run["summary"]["status"] == "partial"
    # Bombs are refused at the probe: the run over 17 files takes seconds, not minutes.
    assert limits_run["elapsed"] < 60, limits_run["elapsed"]
    # The parent never holds a frame: its peak RSS grows by little (S7 "parent RSS stable").
    assert limits_run["parent_growth"] < 150 << 20, limits_run["parent_growth"] / 2**20
    check_library(limits_run["lib"])


@pytest.mark.parametrize(("row_id", "error_type", "in_message"), [
    ("B13_16k", "TooLarge", "15360x8640 frames exceed"),
    ("B23_streams", "TooManyStreams", "50 streams (50 video)"),
    ("S7_streams", "TooManyStreams", "100 streams (1 video)"),
    ("B23_frames", "TooManyFrames", "more than 10000 frames (--max-frames)"),
    ("B23_claim", "TooManyFrames", "claims 30000 frames"),
    ("S7_dims_8000", "TooLarge", "8000x8000"),
    ("S7_dims_60000", "CorruptContainer", "frame size is missing or invalid"),
])
def test_b23_s7_limits_refuse_at_probe(limits_run: dict[str, Any], limit_inputs: dict[str, Path], row_id: str,
                                       error_type: str, in_message: str) -> None:
    r = _row(limits_run, limit_inputs[row_id])
    assert (r["status"], r["stage"], r["error_type"]) == ("failed", "probe", error_type), r
    assert in_message in r["error_message"] and limit_inputs[row_id].name in r["error_message"]
    assert r["num_clips"] == 0 and r["video_id"] not in limits_run["clips"]


def test_b13_8k_decoded_with_downscale_and_header_lies_ignored(limits_run: dict[str, Any],
                                                               limit_inputs: dict[str, Path]) -> None:
    r = _row(limits_run, limit_inputs["B13_8k"])
    assert (r["status"], r["width"], r["height"], r["coverage"]) == ("done", 7680, 4320, 1.0)
    # The MJPEG's header claims 30000x30000; the bitstream's 64x48 is what counts.
    r = _row(limits_run, limit_inputs["S7_dims_mjpeg"])
    assert (r["status"], r["width"], r["height"]) == ("done", 64, 48)


@pytest.mark.parametrize("row_id", ["B21_mp4", "B21_avi"])
def test_b21_over_claimed_frames_clamped_and_partial(limits_run: dict[str, Any], limit_inputs: dict[str, Path],
                                                     row_id: str) -> None:
    r = _row(limits_run, limit_inputs[row_id])
    # All 60 real frames decode; the claim of 600 makes coverage 0.1: never "done" (rule 2).
    assert (r["status"], r["error_type"], r["frame_count"]) == ("partial", "PartialDecode", 60), r
    assert r["coverage"] == pytest.approx(0.1) and "decoded 60 of 600 frames" in r["error_message"]
    clips = limits_run["clips"][r["video_id"]]
    assert len(clips) == 2  # ceil(6 s / 4 s): times come from the real frames, not the claim
    assert max(i for idx, _, _ in clips for i in idx) < 60  # sampled indices within decodable frames
    assert max(end for _, _, end in clips) <= r["duration_s"] + 1e-6 and r["duration_s"] == pytest.approx(6.0)


def _decode_all(w: Any, path: Path) -> tuple[Any, list[Any]]:
    """Plan and decode every clip of ``path`` with the decode worker ``w``."""
    from vidsearch.pipeline.discover import make_task
    from vidsearch.pipeline.types import ChunkRequest

    plan = w.plan(make_task(os.fsencode(path)))
    chunks = [] if isinstance(plan, Exception) else [
        w.decode(ChunkRequest(plan.task, lo, min(len(plan.clips), lo + 16), len(plan.clips)))
        for lo in range(0, len(plan.clips), 16)]
    return plan, chunks


B13_BUDGET = 1 << 30  # docs/RELIABILITY.md B13: the decode child's peak RSS, 1 GB


@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_b13_decode_child_peak_rss_under_budget(limit_inputs: dict[str, Path], decoder: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """One decode child probes the 16K-wide file (TooLarge) and decodes the 8K one with a
    decode-side downscale; its peak RSS (VmHWM: ru_maxrss would include the forking parent's
    peak) stays under 1 GB. [M] 8K before the downscale: 1.16 GB (PyAV), 1.70 GB (decord);
    after: 0.56 GB and 0.72 GB, of which 0.24 GB is the child's start-up."""
    from vidsearch.models import get_model_config
    from vidsearch.pipeline.decode import DecodeWorker
    from vidsearch.pipeline.readers import DECODER_ENV, resize_uint8
    from vidsearch.pipeline.types import FramesChunk, VideoError

    monkeypatch.setenv(DECODER_ENV, decoder)  # the reader tried first; the child inherits it
    pp = get_model_config(MODEL).preprocess
    w = DecodeWorker(IngestCfg(), pp)
    try:
        plan, chunks = _decode_all(w, limit_inputs["B13_16k"])
        assert isinstance(plan, VideoError) and plan.error_type == "TooLarge" and not chunks
        plan, chunks = _decode_all(w, limit_inputs["B13_8k"])
        peak = w.peak_rss_bytes()
    finally:
        w.close()
    assert all(isinstance(c, FramesChunk) and not c.truncated and c.decoder == decoder for c in chunks), chunks
    assert sum(len(c.kept) for c in chunks) == len(plan.clips) == 1
    assert peak < B13_BUDGET, peak / 2**20
    # The frames are the picture, shrunk: close to the model's resize of the full 8K frames.
    with av.open(str(limit_inputs["B13_8k"])) as c:
        full = {i: resize_uint8(f.to_ndarray(format="rgb24")[None], pp)[0]  # one 8K frame at a time
                for i, f in enumerate(c.decode(video=0))}
    ref = np.stack([full[i] for i in plan.clips[0].frame_indices])
    diff = np.abs(chunks[0].frames[0].astype(np.int16) - ref.astype(np.int16))
    assert diff.mean() < 8, diff.mean()


def test_s7_decode_child_memory_cap_fails_one_video_as_too_large(limit_inputs: dict[str, Path]) -> None:
    """S7: a decode child capped (RLIMIT_DATA, relative to its start-up) below what an 8K frame
    needs fails that video as TooLarge instead of growing; the worker then replaces that child,
    and the next, small video decodes normally."""
    from vidsearch.models import get_model_config
    from vidsearch.pipeline.decode import DecodeWorker
    from vidsearch.pipeline.types import FramesChunk, VideoError

    pp = get_model_config(MODEL).preprocess
    cap = 120  # MiB over the child's start-up: [M] one 8K clip needs ~320, a 64x48 video ~10
    w = DecodeWorker(IngestCfg(decode_memory_mb=cap), pp)
    try:
        plan, chunks = _decode_all(w, limit_inputs["B13_8k"])
        errors = [plan] if isinstance(plan, VideoError) else [c for c in chunks if isinstance(c, VideoError)]
        assert errors and errors[0].error_type == "TooLarge" and f"capped at {cap} MiB" in errors[0].message, (
            plan, chunks)
        # The capped child never grew past its cap, and it was replaced: memory it still held
        # must not fail the next video (seen in CI as EAGAIN on a 64x48 file).
        assert 0 < w.retired_peak_growth_bytes < (cap + 32) << 20, w.retired_peak_growth_bytes
        assert w.restarts == 1
        for _ in range(2):
            plan, chunks = _decode_all(w, limit_inputs["good"])
            assert [len(c.kept) for c in chunks if isinstance(c, FramesChunk)] == [1], chunks
        assert w.restarts == 1
        mem = w.memory_stats()
        assert mem["peak_rss_bytes"] - mem["start_rss_bytes"] < (cap + 32) << 20
    finally:
        w.close()


# ---------------------------------------------------------------------------------------------
# B20: files still being written while they are ingested, by real writers: an ffmpeg process
# recording a fragmented MP4 from frames the test feeds it, and a thread copying an MP4 (index
# at the end) in small pieces, as a slow `cp` into a watched folder would. Both keep writing until
# the first ingest has returned, so the race is decided, not timed.
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow  # docs/RELIABILITY.md 8.4 tier; ~10 s
def test_b20_growing_files_are_unstable_then_ingested_next_run(tmp_path: Path) -> None:
    import subprocess
    import threading

    from media_tools import ffmpeg_exe

    d = tmp_path / "in"
    d.mkdir()
    good = lavfi_video(d / "good.mp4", size="64x48", seconds=2, rate=10)
    live = d / "b20_recording.mp4"
    writer = subprocess.Popen(
        [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "96x64",
         "-r", "10", "-i", "pipe:0", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "5",
         "-movflags", "frag_keyframe+empty_moov", "-flush_packets", "1", str(live)],
        stdin=subprocess.PIPE)
    finish = threading.Event()
    fed = [0]

    def recorder() -> None:
        rng = np.random.default_rng(0)
        assert writer.stdin is not None
        while not finish.wait(0.02) or fed[0] < 45:  # at least 4.5 s of video in the end
            writer.stdin.write(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8).tobytes())
            writer.stdin.flush()
            fed[0] += 1
        writer.stdin.close()

    src = lavfi_video(tmp_path / "moov_at_end.mp4", size="128x96", seconds=4, rate=10)  # index last
    data = src.read_bytes()
    copy = d / "b20_being_copied.mp4"
    copy.write_bytes(data[:4096])
    finish = threading.Event()

    def appender() -> None:
        # Slowly (1/400 of the file every 50 ms) until told to finish, then the rest at once: the
        # copy is certainly incomplete, and growing, for the whole first ingest.
        step = max(1, len(data) // 400)
        with open(copy, "ab") as f:
            off = 4096
            while off < len(data):
                n = len(data) - off if finish.wait(0.05) else step
                f.write(data[off: off + n])
                f.flush()
                off += n

    threads = [threading.Thread(target=f, daemon=True) for f in (recorder, appender)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while (not live.exists() or live.stat().st_size < 4096) and time.monotonic() < deadline:
            time.sleep(0.05)  # a few fragments recorded
        lib = tmp_path / "lib"
        s = ingest([d], lib)
    finally:
        finish.set()
        for t in threads:
            t.join(timeout=60)
        writer.wait(timeout=60)
    rows = _rows(Library(lib))
    clips = _clip_rows(Library(lib))
    for p in (live, copy):
        r = rows[os.fsencode(p)]
        assert (r["status"], r["error_type"]) == ("failed", "Unstable"), r
        assert p.name in r["error_message"] and "retried next run" in r["error_message"]
        assert r["video_id"] not in clips  # no clip committed from content that is not the file's
    # The copy's index was not written yet: the probe's verdict (CorruptContainer, which is
    # never retried) is replaced by Unstable because the file changed meanwhile.
    r = rows[os.fsencode(copy)]
    assert r["stage"] == "probe" and "CorruptContainer" in r["error_message"], r
    assert rows[os.fsencode(good)]["status"] == "done" and s.exit_code == 2
    check_library(lib)
    unstable_ids = {rows[os.fsencode(p)]["video_id"] for p in (live, copy)}
    assert copy.read_bytes() == data  # the copy is complete now; the recording too (writer exited)

    # Next run: both are complete, new content ids -> ingested; the Unstable rows are replaced.
    s = ingest([d], lib)
    assert (s.videos_done, s.videos_failed, s.videos_replaced, s.exit_code) == (2, 0, 2, 0)
    rows = _rows(Library(lib))
    clips = _clip_rows(Library(lib))
    # 4-s windows over fed/10 s of video; a last window under min_shot_seconds (1 s) joins the one
    # before it (pipeline/segment.py's tail rule): 45 frames are one clip [0, 4.5), not two.
    windows = math.ceil(fed[0] / 10 / 4)
    tail_s = fed[0] / 10 - 4 * (windows - 1)
    for p, n_clips in ((live, windows - 1 if windows > 1 and tail_s < 1 - 1e-9 else windows), (copy, 1)):
        r = rows[os.fsencode(p)]
        assert (r["status"], r["num_clips"], r["coverage"]) == ("done", n_clips, 1.0), r
        assert len(clips[r["video_id"]]) == n_clips
    with Library(lib).connect_catalog() as con:
        old = con.execute("SELECT DISTINCT status FROM videos WHERE video_id IN (SELECT unnest(?))",
                          [sorted(unstable_ids)]).fetchall()
    assert old == [("replaced",)]
    check_library(lib)


# ---------------------------------------------------------------------------------------------
# Slow tier (docs/RELIABILITY.md 8.4): B14, B21's hang and quarantine, B23's 10^6-frame bomb.
# ---------------------------------------------------------------------------------------------
class _RssSampler:
    """Samples this process's RSS and its children's (the decode child) every 0.2 s."""

    def __init__(self) -> None:
        import threading

        self.samples: list[tuple[float, int, int]] = []  # (t, parent RSS, largest child RSS)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _RssSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()

    def _run(self) -> None:
        me = os.getpid()
        t0 = time.monotonic()
        while not self._stop.wait(0.2):
            child = 0
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                        child = max(child, _status_of(Path(pid))["VmRSS"])
                except (OSError, KeyError, ValueError, IndexError):
                    continue
            self.samples.append((time.monotonic() - t0, _status_of(Path("self"))["VmRSS"], child))


@pytest.mark.slow
def test_b14_three_hour_video_streams_with_flat_memory(tmp_path: Path) -> None:
    """3 h at 1 fps (10,800 frames, 64x64): one clip per 4 s (2,700), decoded in one forward
    pass in chunks, with parent and decode-child RSS flat from the first half to the second."""
    video = tmp_path / "in" / "b14_3h.mp4"
    video.parent.mkdir()
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x64:rate=1:duration=10800", "-c:v", "libx264", "-preset",
           "ultrafast", "-crf", "35", "-g", "300", "-pix_fmt", "yuv420p", video)
    lib = tmp_path / "lib"
    with _RssSampler() as rss:
        s = ingest([video], lib, timeout=120)
    assert (s.videos_done, s.clips) == (1, math.ceil(10800 / 4.0))
    r = _rows(Library(lib))[os.fsencode(video)]
    assert (r["status"], r["frame_count"], r["num_clips"], r["coverage"]) == ("done", 10800, 2700, 1.0)
    assert r["duration_s"] == pytest.approx(10800.0)
    check_library(lib)
    busy = [x for x in rss.samples if x[2] > 0]  # while the decode child lived
    assert len(busy) >= 20, rss.samples
    half = len(busy) // 2
    for k, who in ((1, "parent"), (2, "decode child")):
        first, second = max(x[k] for x in busy[:half]), max(x[k] for x in busy[half:])
        assert second - first < 64 << 20, (who, first >> 20, second >> 20)  # flat: no per-clip growth
    assert max(x[2] for x in busy) < 600 << 20


@pytest.mark.slow
def test_b21_decoder_hang_killed_then_quarantined_within_budget(limit_inputs: dict[str, Path], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The over-claiming file's decoder hangs (test hook; decord #373's hang is not reproducible
    here because the indices are clamped): killed at the timeout -> DecodeTimeout, retried once,
    then quarantined; each run stays within timeout + start-up; the other video is done once."""
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(limit_inputs["B21_avi"], d / "b21_hangs.avi")
    shutil.copy(limit_inputs["good"], d / "good.mp4")
    monkeypatch.setenv("VIDSEARCH_TEST_DECODE_FAULT", "hang:b21_hangs")
    lib = tmp_path / "lib"
    results = []
    for _ in range(3):
        t0 = time.monotonic()
        s = ingest([d], lib, timeout=3.0)
        results.append((s.videos_done, s.videos_failed, s.videos_quarantined, s.exit_code, time.monotonic() - t0))
    assert [r[:4] for r in results] == [(1, 1, 0, 2), (0, 1, 0, 2), (0, 0, 1, 2)], results
    assert all(r[4] < 3.0 + 30 for r in results), results  # the timeout plus start-up, never a hang
    r = _rows(Library(lib))[os.fsencode(d / "b21_hangs.avi")]
    assert (r["status"], r["error_type"], r["attempts"]) == ("failed", "DecodeTimeout", 2)
    assert "within 3 s" in r["error_message"]
    check_library(lib)


@pytest.mark.slow
def test_b23_million_frame_bomb_refused_under_default_limits(tmp_path: Path) -> None:
    """1x1 px, 2^20 frames, matroska (no frame count in the header): the probe's counting demux
    stops at the default 10^6 limit in bounded time and memory ([M] 4.5 s, 76 MB in-process)."""
    from vidsearch.pipeline.probe import probe
    from vidsearch.pipeline.types import VideoError

    small = tmp_path / "small.mkv"
    ffmpeg("-f", "lavfi", "-i", "color=c=red:size=1x1:rate=1000", "-frames:v", "4096", "-c:v", "ffv1", small)
    bomb = tmp_path / "in" / "b23_1x1_2pow20_frames.mkv"
    bomb.parent.mkdir()
    ffmpeg("-stream_loop", "255", "-i", small, "-c", "copy", bomb)  # 256 x 4096 frames, copied
    cfg = IngestCfg()
    assert cfg.max_frames == 1_000_000
    t0 = time.monotonic()
    with pytest.raises(VideoError, match="more than 1000000 frames") as e:
        probe(os.fsencode(bomb), cfg)
    assert e.value.error_type == "TooManyFrames" and time.monotonic() - t0 < 60
    # Through a real ingest: a failure row, the decode child bounded.
    lib = tmp_path / "lib"
    with _RssSampler() as rss:
        s = ingest([bomb.parent], lib, timeout=120)
    assert (s.videos_failed, s.failures[0]["error_type"]) == (1, "TooManyFrames")
    assert max(x[2] for x in rss.samples) < 600 << 20
    check_library(lib)
