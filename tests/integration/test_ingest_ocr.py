"""``ingest --ocr`` end to end with real parts: text drawn with ffmpeg's drawtext (DejaVu) at known
times on a still and on a moving background, a Pillow slide deck, a video without text; rapidocr's
packaged models; the local executor.

Checked: ``screen_text`` holds each shown text at the right time (start and end within 1 s), each
video's OCR status (ok / none, the engine + settings id), the OCR frames came from the clips' own
decode pass (one decode per video), ``vidsearch sql``, ``status`` and ``doctor`` see them, the
keyword index finds each text in the right video, a rerun redoes nothing, and ``--ocr`` added to a
library ingested without it reads the videos without embedding anything again (its clip shards
untouched) and gives the same rows. A failed OCR is a failure of stage ``ocr`` only, retried by
the next run without re-embedding (reliability tier).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from media_tools import TEST_MODEL, lavfi_video
from ocr_tools import FONT_BOLD, Shown, drawtext, drawtext_video, need_font, pillow_video, slide_frames

from vidsearch.cli import main
from vidsearch.commands.ingest import format_summary
from vidsearch.indexer.keyword import KeywordIndex
from vidsearch.indexer.text import keyword_dir
from vidsearch.library import Library
from vidsearch.pipeline.ocr import similarity
from vidsearch.pipeline.runner import IngestOptions, IngestSummary, run_ingest
from vidsearch.schemas.config import IngestCfg

SIGN = [Shown("OPENING HOURS", 1.0, 4.0), Shown("GRAND SALE TODAY", 5.0, 9.0)]
MOVING = [Shown("Platform 7 closed", 0.0, 3.0)]
SLIDES = [("Quarterly results", ["Revenue grew twelve percent", "Costs fell in March"]),
          ("Hiring plan", ["Four engineers in Lisbon", "Two designers remote"]),
          ("Next steps", ["Launch the mobile app", "Review pricing in June"])]
SLIDE_S = 3.0


def shown_slides() -> list[Shown]:
    return [Shown(line, SLIDE_S * i, SLIDE_S * (i + 1)) for i, (title, bullets) in enumerate(SLIDES)
            for line in [title, *(f"- {b}" for b in bullets)]]


def ingest(src: Path, lib: Path, *, ocr: bool = True, **opts: Any) -> IngestSummary:
    return run_ingest([str(src)], lib, IngestCfg(decode_workers=1, batch_size=8),
                      IngestOptions(model=TEST_MODEL, executor="local", progress=False, ocr=ocr,
                                    ocr_threads=2 if ocr else None, **opts))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    need_font()
    d = tmp_path_factory.mktemp("ocr_corpus") / "videos"
    d.mkdir()
    drawtext_video(d / "sign.mp4", "color=c=navy:size=960x540", [
        drawtext(SIGN[0].text, SIGN[0].start_s, SIGN[0].end_s, size=48, colour="white", x="100", y="100"),
        drawtext(SIGN[1].text, SIGN[1].start_s, SIGN[1].end_s, size=40, colour="yellow", x="200", y="300",
                 font=FONT_BOLD)], seconds=11)
    # A caption scrolling across a moving test pattern: the picture never stands still.
    drawtext_video(d / "moving.mp4", "testsrc2=size=640x360", [
        drawtext(MOVING[0].text, MOVING[0].start_s, MOVING[0].end_s, size=36, colour="white", x="40+30*t", y="280",
                 extra="box=1:boxcolor=black@0.7")], seconds=5)
    lavfi_video(d / "plain.mp4", seconds=6, rate=10, size="320x240", src="smptebars")
    pillow_video(d / "slides.mp4", slide_frames(SLIDES, seconds_each=SLIDE_S, rate=5), size=(1280, 720), rate=5)
    return {"dir": d, "shown": {"sign.mp4": SIGN, "moving.mp4": MOVING, "slides.mp4": shown_slides()}}


@pytest.fixture(scope="module")
def ocr_lib(corpus: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    lib = tmp_path_factory.mktemp("ocr_lib") / "lib"
    return {"lib": lib, "summary": ingest(corpus["dir"], lib)}


def catalog(lib: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with Library(lib).connect_catalog() as con:
        return con.execute(sql, params or []).fetchall()


def by_name(lib: Path) -> dict[str, str]:
    return {os.path.basename(p): v for v, p in catalog(lib, "SELECT video_id, path FROM videos")}


def screen_snapshot(lib: Path) -> list[tuple[Any, ...]]:
    """Run-independent screen text (ids, times to the ms, text, box, model)."""
    return sorted(catalog(lib, "SELECT video_id, text_id, round(start_s, 3), round(end_s, 3), text, "
                               "round(confidence, 4), box, model FROM screen_text"))


def assert_texts_at_their_times(lib: Path, shown: dict[str, list[Shown]]) -> None:
    ids = by_name(lib)
    rows = catalog(lib, "SELECT video_id, start_s, end_s, text FROM screen_text")
    for name, texts in shown.items():
        mine = [r for r in rows if r[0] == ids[name]]
        for s in texts:
            best = max(mine, key=lambda r: similarity(r[3], s.text), default=None)
            assert best is not None and similarity(best[3], s.text) >= 0.8, (name, s, mine)
            assert abs(best[1] - s.start_s) <= 1.0 and abs(best[2] - s.end_s) <= 1.0, (name, s, best)


def test_screen_text_holds_each_text_at_its_time(ocr_lib: dict[str, Any], corpus: dict[str, Any]) -> None:
    s = ocr_lib["summary"]
    assert s.exit_code == 0 and s.videos_done == 4 and s.videos_failed == 0
    assert (s.screen_videos, s.screen_none, s.screen_failed) == (3, 1, 0)
    lib = ocr_lib["lib"]
    assert_texts_at_their_times(lib, corpus["shown"])
    # Times are stored to the millisecond (no float noise for `vidsearch sql` to print).
    times = [t for r in catalog(lib, "SELECT start_s, end_s FROM screen_text") for t in r]
    times += [t for r in catalog(lib, "SELECT start_s, end_s, frame_times_s FROM clips")
              for t in (r[0], r[1], *r[2])]
    assert times and all(t == round(t, 3) for t in times)
    ids = by_name(lib)
    assert catalog(lib, "SELECT count(*) FROM screen_text WHERE video_id = ?", [ids["plain.mp4"]]) == [(0,)]
    # Boxes are fractions of the displayed frame: the sign's first text is in its upper left.
    (box,) = catalog(lib, "SELECT box FROM screen_text WHERE video_id = ? AND text ILIKE 'opening%'",
                     [ids["sign.mp4"]])[0]
    assert 0.05 < box[0] < box[2] < 0.6 and 0.1 < box[1] < box[3] < 0.35
    # What OCR cost is on record: candidates every 0.5 s of the 34 s of video, reads far fewer
    # (a slide is read once; the still sign when its text changes), one decode pass per video.
    assert 60 <= s.ocr_candidates <= 75 and 8 <= s.ocr_frames_read <= 30 and s.ocr_work_s > 0
    assert s.ocr_video_s == pytest.approx(11 + 5 + 6 + 9, abs=0.5) and s.embed_calls >= 1
    assert s.screen_model and s.screen_model.startswith("rapidocr-3.") and s.ocr_device == "cpu"


def test_screen_status_per_video(ocr_lib: dict[str, Any]) -> None:
    lib, ids, s = ocr_lib["lib"], by_name(ocr_lib["lib"]), ocr_lib["summary"]
    st = {v: (status, model, n, media) for v, status, model, n, media in catalog(
        lib, "SELECT video_id, status, model, segments, media_s FROM text_status WHERE kind = 'screen'")}
    assert {name: st[v][0] for name, v in ids.items()} == {
        "sign.mp4": "ok", "moving.mp4": "ok", "slides.mp4": "ok", "plain.mp4": "none"}
    assert {m for _, m, _, _ in st.values()} == {s.screen_status_model}
    assert s.screen_status_model.startswith(s.screen_model + "@") and len(s.screen_status_model.rsplit("@")[1]) == 8
    assert sum(n for _, _, n, _ in st.values()) == s.screen_rows
    assert catalog(lib, "SELECT count(*) FROM failures") == [(0,)]
    # The run record keeps the OCR figures and settings (a later --ocr reuses the detector size).
    run = Library(lib).read_manifest().runs[-1]
    assert run["ocr"]["read"] == s.ocr_frames_read and run["settings"]["ocr_det_side"] == 960
    line = next(x for x in format_summary(s.to_dict()).splitlines() if x.startswith("  screen"))
    assert line.startswith(f"  screen    3 videos with text, {s.screen_rows} rows, 1 without text; OCR read "
                           f"{s.ocr_frames_read} frames of {s.ocr_candidates} candidates in ")
    assert "frames/s" in line and "video h/h per worker" in line and s.screen_status_model in line


def test_sql_status_and_doctor_see_the_screen_text(ocr_lib: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    lib = str(ocr_lib["lib"])
    assert main(["sql", "SELECT v.path, s.text FROM screen_text s JOIN videos v USING (video_id) "
                 "WHERE s.text ILIKE '%sale%'", "--library", lib, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["path"].endswith("sign.mp4")
    assert main(["status", "--library", lib]) == 0
    out = capsys.readouterr().out
    n = ocr_lib["summary"].screen_rows
    assert f"screen  3 videos with text on screen ({n} rows), 1 without" in out
    assert main(["status", "--library", lib, "--json"]) == 0
    st = json.loads(capsys.readouterr().out)["text"]
    assert st["screen"] == {"ok": 3, "none": 1} and st["screen_rows"] == n
    assert main(["doctor", "--library", lib]) == 0
    capsys.readouterr()


def test_keyword_index_finds_each_text_in_its_video(ocr_lib: dict[str, Any], corpus: dict[str, Any]) -> None:
    lib, ids = ocr_lib["lib"], by_name(ocr_lib["lib"])
    assert "keyword index built" in (ocr_lib["summary"].index or "")
    index = KeywordIndex.open(keyword_dir(Library(lib)))
    for query, name in [("opening hours", "sign.mp4"), ("grand sale", "sign.mp4"), ("platform closed", "moving.mp4"),
                        ("engineers in lisbon", "slides.mp4"), ("pricing", "slides.mp4")]:
        hits = index.search(query, 3, modalities=["screen"])
        assert hits and (hits[0].video_id, hits[0].source) == (ids[name], "screen"), (query, hits[:1])
        shown = next(s for s in corpus["shown"][name] if similarity(hits[0].snippet.text, s.text) >= 0.8)
        assert abs(hits[0].start_s - shown.start_s) <= 1.0, (query, hits[0])


def test_search_in_screen_finds_each_text_at_its_time(ocr_lib: dict[str, Any], corpus: dict[str, Any],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``vidsearch search --in screen`` on a real ``ingest --ocr`` library: the right video at the
    right time, the matched words marked in the snippet; the default search fuses screen text in."""
    lib = str(ocr_lib["lib"])
    for query, name, shown in [("grand sale", "sign.mp4", SIGN[1]), ("platform closed", "moving.mp4", MOVING[0]),
                               ("engineers in lisbon", "slides.mp4",
                                next(x for x in shown_slides() if "Lisbon" in x.text))]:
        assert main(["search", query, "--library", lib, "--in", "screen", "--json", "--no-history"]) == 0
        out = json.loads(capsys.readouterr().out)
        top = out["hits"][0]
        assert top["path"].endswith(name) and top["modalities"] == ["screen"], (query, top)
        assert abs(top["play_s"] - shown.start_s) <= 1.0, (query, top)
        assert top["start_s"] <= shown.start_s + 1.0 and top["end_s"] >= shown.end_s - 1.0, (query, top)
        snip = top["snippet"]
        marked = " ".join(snip["text"][a:b] for a, b in snip["marks"]).lower()
        assert snip["source"] == "screen" and all(w[:4] in marked for w in query.split() if len(w) > 2), (query, snip)
    # Without --in, every modality the library has: the pictures and the screen text, fused.
    assert main(["search", "grand sale", "--library", lib, "--json", "--no-history"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "screen" in out["modalities"] and "visual" in out["modalities"]
    best = next(h for h in out["hits"] if "screen" in h["modalities"])
    assert best["path"].endswith("sign.mp4") and abs(best["play_s"] - SIGN[1].start_s) <= 1.0


def test_rerun_redoes_nothing(ocr_lib: dict[str, Any], corpus: dict[str, Any], tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    shutil.copytree(ocr_lib["lib"], lib)
    shards = Library(lib).read_manifest().shards
    s = ingest(corpus["dir"], lib)
    assert s.exit_code == 0 and s.videos_skipped == 4 and s.embed_calls == 0
    assert (s.screen_done_before, s.text_only_videos, s.ocr_candidates, s.ocr_frames_read) == (4, 0, 0, 0)
    assert Library(lib).read_manifest().shards == shards  # not one commit
    assert screen_snapshot(lib) == screen_snapshot(ocr_lib["lib"])


def test_ocr_added_later_reads_without_re_embedding(ocr_lib: dict[str, Any], corpus: dict[str, Any],
                                                    tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    plain = ingest(corpus["dir"], lib, ocr=False)
    assert plain.exit_code == 0 and plain.videos_done == 4 and plain.screen_model is None
    m = Library(lib).read_manifest()
    clip_files = {s.clips_file: (s.clips_sha256, (lib / s.clips_file).stat().st_mtime_ns) for s in m.shards}
    s = ingest(corpus["dir"], lib)
    assert s.exit_code == 0 and s.embed_calls == 0 and s.clips == 0 and s.videos_skipped == 4
    assert (s.text_only_videos, s.screen_videos, s.screen_none) == (4, 3, 1)
    m2 = Library(lib).read_manifest()
    new = m2.shards[len(m.shards):]
    assert new and all(e.clips_rows == 0 and e.videos_rows == 0 for e in new)  # screen text + status only
    assert all(set(e.tables) <= {"screen_text", "text_status"} for e in new)
    assert {f: (sha, (lib / f).stat().st_mtime_ns) for f, (sha, _) in clip_files.items()} == clip_files
    # The same candidates, change checks and readings as during the first ingest: the same rows.
    assert screen_snapshot(lib) == screen_snapshot(ocr_lib["lib"])
    # Another detector size is other settings: kept, with a warning, until --reocr.
    s = ingest(corpus["dir"], lib, ocr_det_side=1280)
    assert s.screen_other_settings == 4 and s.text_only_videos == 0 and s.ocr_frames_read == 0
    assert any("--reocr" in w for w in s.warnings)


def test_a_failed_ocr_fails_the_ocr_stage_only(corpus: dict[str, Any], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "v"
    src.mkdir()
    for name in ("sign.mp4", "plain.mp4"):
        shutil.copy(corpus["dir"] / name, src / name)
    lib = tmp_path / "lib"
    monkeypatch.setenv("VIDSEARCH_TEST_OCR_FAULT", "fail:sign.mp4")
    s = ingest(src, lib)
    assert s.exit_code == 2 and s.videos_done == 2 and s.videos_failed == 0 and s.screen_failed == 1
    assert [(f["stage"], f["error_type"]) for f in s.failures] == [("ocr", "OcrError")]
    ids = by_name(lib)
    assert catalog(lib, "SELECT video_id, stage, error_type FROM failures") == [(ids["sign.mp4"], "ocr", "OcrError")]
    assert catalog(lib, "SELECT status, num_clips > 0 FROM videos WHERE video_id = ?", [ids["sign.mp4"]]) == [
        ("done", True)]  # the clips stay
    assert catalog(lib, "SELECT count(*) FROM screen_text") == [(0,)]
    monkeypatch.delenv("VIDSEARCH_TEST_OCR_FAULT")
    s = ingest(src, lib)  # retried under the attempt policy: an OCR-only pass, nothing re-embedded
    assert s.exit_code == 0 and s.embed_calls == 0 and s.screen_videos == 1 and s.text_only_videos == 1
    assert catalog(lib, "SELECT status, attempts FROM text_status WHERE kind = 'screen' AND video_id = ?",
                   [ids["sign.mp4"]]) == [("ok", 2)]
    assert_texts_at_their_times(lib, {"sign.mp4": SIGN})


def test_ocr_flags_need_ocr_and_sane_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "v").mkdir()
    lavfi_video(tmp_path / "v" / "a.mp4", seconds=1, rate=10)
    lib = str(tmp_path / "lib")
    for args, message in ((["--reocr"], "--reocr needs --ocr"),
                          (["--ocr-det-side", "1280", "--ocr-threads", "2"],
                           "--ocr-threads, --ocr-det-side need --ocr"),
                          (["--ocr", "--ocr-workers", "0"], "--ocr-workers and --ocr-threads must be at least 1"),
                          (["--ocr", "--ocr-det-side", "50"], "--ocr-det-side 50: expected 160..4096 pixels")):
        assert main(["ingest", str(tmp_path / "v"), "--library", lib, *args]) == 1, args
        assert message in capsys.readouterr().err, args
    assert not Path(lib).exists()


def test_videos_with_ocr_are_decoded_on_the_cpu_path(corpus: dict[str, Any], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU decoder hands out no OCR frames: with GPU decode on (PyAV's CPU decoder standing in
    for NVDEC) videos with --ocr go to the CPU decode workers; their screen text is read."""
    monkeypatch.setenv("VIDSEARCH_TEST_NVDEC_CPU", "1")
    src = tmp_path / "v"
    src.mkdir()
    (src / "sign.mp4").symlink_to(corpus["dir"] / "sign.mp4")
    cfg = IngestCfg(decode_workers=1, batch_size=8, gpu_decode_min_pixels=0)
    opts = dict(model=TEST_MODEL, executor="local", progress=False, build_index=False, decode="auto", nvdec_sessions=2)
    plain = run_ingest([str(src)], tmp_path / "plain", cfg, IngestOptions(**opts))  # type: ignore[arg-type]
    assert plain.decoders == "gpu+cpu" and plain.gpu_videos == 1  # without OCR the GPU takes it
    s = run_ingest([str(src)], tmp_path / "ocr", cfg, IngestOptions(**opts, ocr=True, ocr_threads=2))  # type: ignore[arg-type]
    assert s.decoders == "gpu+cpu" and s.gpu_videos == 0 and s.videos_done == 1 and s.screen_videos == 1
    assert_texts_at_their_times(tmp_path / "ocr", {"sign.mp4": SIGN})
