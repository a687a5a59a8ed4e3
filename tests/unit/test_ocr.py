"""Screen-text units (issue 15): candidate frames, change check, rapidocr reading, merging, search.

The videos are made here: text drawn with ffmpeg's drawtext (DejaVu fonts) and slides drawn with
Pillow, at known times, several sizes, colours and backgrounds, a moving text, a text-free video.
OCR runs for real (rapidocr's packaged PP-OCRv6 models, offline); nothing is mocked except an
engine failure and the network, which must never be reached.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from ocr_tools import (
    FONT_BOLD,
    FONT_SERIF,
    Shown,
    drawtext,
    drawtext_video,
    frame_times,
    need_font,
    ocr_candidates,
    ocr_samples,
    pillow_font,
    pillow_video,
    slide_frames,
)

from vidsearch.pipeline import ocr
from vidsearch.pipeline.ocr import (
    ChangeGate,
    FrameText,
    OcrDeviceError,
    OcrError,
    OcrModelNotFoundError,
    ScreenReader,
    TextBox,
    clean_text,
    grey_half,
    merge_screen_text,
    normalize_text,
    ocr_frame_size,
    ocr_sample_indices,
    read_video_text,
    similarity,
    tile_change,
)
from vidsearch.schemas.ocr_config import OcrCfg
from vidsearch.schemas.text_tables import keyword_docs, screen_text_table

CFG = OcrCfg(threads=2)


# ----------------------------------------------------------------------------------------------
# Pure parts


def test_ocr_frame_size_keeps_aspect_never_upscales_and_is_even() -> None:
    assert ocr_frame_size(1920, 1080, 1280) == (1280, 720)
    assert ocr_frame_size(3840, 2160, 1280) == (1280, 720)
    assert ocr_frame_size(1080, 1920, 1280) == (720, 1280)      # portrait: the long side is the height
    assert ocr_frame_size(640, 360, 1280) == (640, 360)         # small videos are not upscaled
    assert ocr_frame_size(1001, 777, 1280) == (1000, 776)       # odd sizes rounded down to even
    w, h = ocr_frame_size(2000, 857, 1280)                      # 2.33:1 scope
    assert w == 1280 and abs(h - 857 * 1280 / 2000) <= 2 and h % 2 == 0
    with pytest.raises(ValueError):
        ocr_frame_size(0, 100, 1280)


def test_ocr_sample_indices_one_frame_per_interval_nearest_in_time() -> None:
    pts = [i / 25 for i in range(250)]                          # 10 s at 25 fps
    idx = ocr_sample_indices(pts, 0.5)
    assert len(idx) == 21 and idx[0] == 0 and idx[-1] == 249    # 0, 0.5, ..., 10.0 (the last frame, 9.96 s)
    assert all(abs(pts[i] - k * 0.5) <= 0.5 / 25 + 1e-9 for k, i in enumerate(idx[:-1]))   # within half a frame
    # variable frame rate: the nearest frame to each grid point, never one twice
    vfr = [0.0, 0.05, 0.4, 0.42, 1.3, 1.31, 2.9, 3.0]
    assert ocr_sample_indices(vfr, 1.0) == [0, 4, 5, 7]   # 2.0 -> 1.31 (0.69 away), not 2.9 (0.9)
    # 2 fps video with a 0.25 s grid: each frame once
    assert ocr_sample_indices([0.0, 0.5, 1.0, 1.5], 0.25) == [0, 1, 2, 3]
    assert ocr_sample_indices([], 0.5) == []
    assert ocr_sample_indices([0.0], 0.5) == [0]
    with pytest.raises(ValueError):
        ocr_sample_indices(pts, 0)


def test_normalize_and_similarity_ignore_case_accents_punctuation() -> None:
    assert normalize_text("  Grand-Opening   SALE!! ") == "grand opening sale"
    assert normalize_text("Café Crème") == "cafe creme"
    assert similarity("GRAND OPENING", "Grand opening.") == 1.0
    assert similarity("GRAND OPENING", "GRAND 0PENING") >= 0.9      # one misread letter
    assert similarity("GRAND OPENING", "Fresh bread") < 0.5
    assert similarity("", "x") == 0.0


def test_clean_text_removes_control_characters_and_caps_length() -> None:
    assert clean_text("a\x1b[2Jb\tc\n d\u200b") == "a [2Jb c d"
    assert len(clean_text("x" * 10_000)) == ocr.MAX_TEXT_CHARS


def test_ocr_cfg_refuses_bad_values() -> None:
    for bad in ({"interval_s": 0}, {"long_side": 100}, {"min_confidence": 1.0}, {"merge_similarity": 0},
                {"threads": -1}, {"change_tile": 1}, {"refresh_s": -1}):
        with pytest.raises(ValueError):
            OcrCfg(**bad)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# Change check


def _frame_with_text(text: str, *, size: tuple[int, int] = (1280, 720), at: tuple[int, int] = (100, 100),
                     font_size: int = 40, bg: tuple[int, int, int] = (30, 60, 90),
                     fill: tuple[int, int, int] = (220, 220, 40),
                     noise: np.random.Generator | None = None) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, bg)
    if text:
        ImageDraw.Draw(img).text(at, text, font=pillow_font(font_size), fill=fill)
    a = np.asarray(img).copy()
    if noise is not None:  # encoder-like noise: +-3 grey levels
        a = np.clip(a.astype(np.int16) + noise.integers(-3, 4, a.shape), 0, 255).astype(np.uint8)
    return a


def test_change_gate_reads_changed_text_not_noise_or_brightness() -> None:
    rng = np.random.default_rng(0)
    cfg = OcrCfg(min_ocr_interval_s=0.0, refresh_s=0.0)
    gate = ChangeGate(cfg)
    assert gate.decide(0.0, _frame_with_text("Score 2 - 1", noise=rng)) == "ocr"       # first frame
    assert gate.decide(0.5, _frame_with_text("Score 2 - 1", noise=rng)) == "same"      # noise only
    brighter = (_frame_with_text("Score 2 - 1").astype(np.int16) + 25).astype(np.uint8)  # no pixel clips
    assert gate.decide(1.0, brighter) == "same"                                        # exposure drift
    # one digit of small text changes: a single tile moves
    assert gate.decide(1.5, _frame_with_text("Score 3 - 1", font_size=18, noise=rng)) == "ocr"
    assert gate.decide(2.0, _frame_with_text("Score 3 - 1", font_size=18, noise=rng)) == "same"
    assert gate.decide(2.5, _frame_with_text("Score 3 - 2", font_size=18, noise=rng)) == "ocr"
    assert gate.last_change > cfg.change_threshold


def test_change_gate_caps_the_read_rate_and_refreshes() -> None:
    gate = ChangeGate(OcrCfg(min_ocr_interval_s=1.0, refresh_s=3.0))
    frames = [_frame_with_text(f"Frame {i} text", at=(50 + 40 * i, 100)) for i in range(8)]
    got = [gate.decide(i * 0.5, f) for i, f in enumerate(frames)]
    # every candidate changed (a pan): read at most once per second, the others are "skip"
    assert got == ["ocr", "skip", "ocr", "skip", "ocr", "skip", "ocr", "skip"]
    still = _frame_with_text("Static")
    gate = ChangeGate(OcrCfg(min_ocr_interval_s=1.0, refresh_s=3.0))
    got = [gate.decide(i * 0.5, still) for i in range(8)]
    assert got == ["ocr", "same", "same", "same", "same", "same", "ocr", "same"]  # re-read after 3 s


def test_tile_change_is_local_and_size_checked() -> None:
    a = np.zeros((360, 640), np.float32)
    b = a.copy()
    b[100:108, 200:230] = 200.0            # a small glyph-sized change
    assert tile_change(a, b, 16) > 50
    assert tile_change(a, a + 30.0, 16) == 0.0   # a global shift is removed
    assert tile_change(a, np.zeros((10, 10), np.float32), 16) == np.inf
    assert grey_half(np.zeros((721, 1281, 3), np.uint8)).shape == (360, 640)


# ----------------------------------------------------------------------------------------------
# Merging


def _tb(text: str, conf: float = 0.95, y: float = 0.1) -> TextBox:
    return TextBox(text, conf, (0.1, y, 0.5, y + 0.05))


def test_merge_joins_misreadings_votes_the_text_and_spans_first_to_last_plus_interval() -> None:
    frames = [
        FrameText(0.0, ()),
        FrameText(1.0, (_tb("GRAND OPENING", 0.99), _tb("Fresh bread", 0.9, y=0.5))),
        FrameText(1.5, None),                                   # unchanged picture: still there
        FrameText(2.0, (_tb("GRAND 0PENING", 0.7), _tb("Fresh bread", 0.92, y=0.5))),   # misread
        FrameText(3.0, (_tb("Grand Opening.", 0.98),)),
        FrameText(4.0, ()),
    ]
    cfg = OcrCfg(interval_s=0.5, max_gap_s=0.5)
    rows = merge_screen_text("v1", frames, cfg=cfg, model="m")
    by = {normalize_text(r.text): r for r in rows}
    assert set(by) == {"grand opening", "fresh bread"}
    g = by["grand opening"]
    assert (g.start_s, g.end_s) == (1.0, 3.5)
    assert g.text in ("GRAND OPENING", "Grand Opening.")        # the misread variant is outvoted
    assert g.confidence == pytest.approx((0.99 + 0.99 + 0.7 + 0.98) / 4)
    assert (by["fresh bread"].start_s, by["fresh bread"].end_s) == (1.0, 2.5)
    # deterministic ids: the same input gives the same rows
    assert [r.text_id for r in merge_screen_text("v1", frames, cfg=cfg, model="m")] == [r.text_id for r in rows]
    assert len({r.text_id for r in rows}) == 2


def test_merge_tolerates_a_short_gap_but_splits_a_long_one_and_caps_at_duration() -> None:
    cfg = OcrCfg(interval_s=0.5, max_gap_s=1.5)
    seen, gone = (_tb("EXIT"),), ()
    frames = [FrameText(0.0, seen), FrameText(1.0, gone), FrameText(2.0, seen),      # 1 s gap: one row
              FrameText(3.0, gone), FrameText(4.0, gone), FrameText(5.0, seen)]      # 3 s gap: new row
    rows = merge_screen_text("v", frames, cfg=cfg, duration_s=5.2)
    assert [(r.start_s, r.end_s) for r in rows] == [(0.0, 2.5), (5.0, 5.2)]


def test_merge_keeps_changed_numbers_apart_and_same_text_twice_in_a_frame() -> None:
    frames = [FrameText(0.0, (_tb("HOME 2 AWAY 1"),)), FrameText(1.0, (_tb("HOME 3 AWAY 1"),)),
              FrameText(2.0, (_tb("HOME 3 AWAY 1"),))]
    rows = merge_screen_text("v", frames, cfg=OcrCfg(interval_s=1.0))
    assert [(r.text, r.start_s, r.end_s) for r in rows] == [("HOME 2 AWAY 1", 0.0, 1.0), ("HOME 3 AWAY 1", 1.0, 3.0)]
    both = (_tb("EXIT", y=0.1), _tb("EXIT", y=0.8))
    two = [FrameText(0.0, both), FrameText(1.0, both)]
    rows = merge_screen_text("v", two, cfg=OcrCfg(interval_s=1.0))
    assert len(rows) == 2 and {r.box[1] for r in rows if r.box} == {0.1, 0.8}
    with pytest.raises(ValueError):
        merge_screen_text("v", [FrameText(2.0, ()), FrameText(1.0, ())])


# ----------------------------------------------------------------------------------------------
# The engine


@pytest.fixture(scope="module")
def reader() -> ScreenReader:
    r = ScreenReader(CFG)
    r.setup()
    return r


def test_reader_loads_packaged_models_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a: object, **k: object) -> None:
        raise AssertionError(f"network access attempted: {a}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import requests

    monkeypatch.setattr(requests, "get", refuse)
    r = ScreenReader(CFG)
    r.setup()
    assert r.model_id.startswith("rapidocr-") and "PP-OCRv6_det_small" in r.model_id
    boxes = r.read(_frame_with_text("Library closed Monday", font_size=48))
    assert [normalize_text(b.text) for b in boxes] == ["library closed monday"]
    x0, y0, x1, y1 = boxes[0].box
    assert 0.05 < x0 < 0.1 and 0.12 < y0 < 0.16 and x1 > x0 + 0.3 and 0.15 < y1 < 0.25   # drawn at (100, 100)


def test_reader_without_models_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ocr, "DET_MODEL", "no-such-model.onnx")
    with pytest.raises(OcrModelNotFoundError, match="no-such-model.onnx.*pip install"):
        ScreenReader(CFG).setup()


def test_reader_on_cuda_without_the_cuda_provider_is_refused() -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(OcrDeviceError, match="onnxruntime-gpu"):
        ScreenReader(OcrCfg(device="cuda")).setup()
    r = ScreenReader(OcrCfg(device="auto", threads=1))
    r.setup()
    assert r.device == "cpu"


def test_reader_blank_frame_bad_frame_and_engine_failure(reader: ScreenReader) -> None:
    assert reader.read(np.full((540, 960, 3), 90, np.uint8)) == []
    for bad in (np.zeros((540, 960), np.uint8), np.zeros((540, 960, 3), np.float32), np.zeros((4, 4, 3), np.uint8)):
        with pytest.raises(ValueError):
            reader.read(bad)

    broken = ScreenReader(CFG)
    broken.setup()

    def fail(img: np.ndarray) -> None:
        raise RuntimeError("onnxruntime: bad allocation")

    broken._engine = fail
    with pytest.raises(OcrError) as ei:
        broken.read(np.zeros((64, 64, 3), np.uint8))
    assert ei.value.error_type == "OcrError" and ei.value.stage == "ocr" and "bad allocation" in ei.value.message
    import pickle

    again = pickle.loads(pickle.dumps(ei.value))   # crosses process boundaries as a value
    assert again.error_type == "OcrError" and again.message == ei.value.message


# ----------------------------------------------------------------------------------------------
# Videos with text at known times

SLIDES = [("Quarterly results", ["Revenue grew in every region", "Costs stayed flat"]),
          ("Project timeline", ["Design review in March", "Launch in June"]),
          ("Team meeting agenda", ["Budget questions", "Hiring plan"]),
          ("Thank you", ["Questions welcome"])]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[Shown]]]:
    """name -> (video, the texts shown in it)."""
    need_font()
    d = tmp_path_factory.mktemp("ocr_videos")
    out: dict[str, tuple[Path, list[Shown]]] = {}
    # flat background, three sizes (72, 36, 16 px of 720: 10%, 5%, 2.2% of the height) and colours
    shown = [Shown("GRAND OPENING", 1.0, 6.0), Shown("Fresh bread daily", 5.0, 10.0),
             Shown("Platform 9 exit north", 3.0, 9.0)]
    filters = [drawtext(shown[0].text, 1.0, 6.0, size=72, colour="yellow", x="60", y="60", font=FONT_BOLD),
               drawtext(shown[1].text, 5.0, 10.0, size=36, colour="red", x="80", y="300", font=FONT_SERIF),
               drawtext(shown[2].text, 3.0, 9.0, size=16, colour="white", x="700", y="620")]
    out["flat"] = (drawtext_video(d / "flat.mp4", "color=c=0x1a2a4a:size=1280x720", filters, seconds=11), shown)
    # busy moving background (testsrc2 carries its own clock text), a boxed and a bordered caption
    shown = [Shown("PHARMACY", 0.5, 5.0), Shown("Caution wet floor", 4.0, 9.0)]
    filters = [drawtext("PHARMACY", 0.5, 5.0, size=48, colour="white", x="100", y="100",
                        extra="box=1:boxcolor=black@0.6:boxborderw=8"),
               drawtext("Caution wet floor", 4.0, 9.0, size=28, colour="yellow", x="200", y="380",
                        extra="borderw=2:bordercolor=black")]
    out["busy"] = (drawtext_video(d / "busy.mp4", "testsrc2=size=960x540", filters, seconds=10), shown)
    # dark text moving across a light background
    shown = [Shown("Museum entrance", 2.0, 8.0)]
    filters = [drawtext("Museum entrance", 2.0, 8.0, size=40, colour="black", x="40+(t-2)*80", y="200+(t-2)*20")]
    out["moving"] = (drawtext_video(d / "moving.mp4", "color=c=0xf0e0c0:size=960x540", filters, seconds=9), shown)
    # no text: a moving fractal
    from media_tools import ffmpeg

    ffmpeg("-f", "lavfi", "-i", "mandelbrot=size=960x540:rate=10", "-t", "4", "-c:v", "libx264", "-preset",
           "veryfast", "-pix_fmt", "yuv420p", d / "notext.mp4")
    out["notext"] = (d / "notext.mp4", [])
    # a slide deck: a new slide every 3 s, title + bullets (Pillow)
    shown = [Shown(t, 3.0 * i, 3.0 * i + 3.0) for i, (title, bullets) in enumerate(SLIDES)
             for t in [title, *("- " + b for b in bullets)]]
    out["slides"] = (pillow_video(d / "slides.mp4", slide_frames(SLIDES, seconds_each=3, rate=10),
                                  size=(1280, 720), rate=10), shown)
    return out


@pytest.fixture(scope="module")
def results(videos: dict[str, tuple[Path, list[Shown]]], reader: ScreenReader) -> dict[str, ocr.ScreenTextResult]:
    out = {}
    for name, (path, _) in videos.items():
        duration = frame_times(path)[-1] + 0.1
        out[name] = read_video_text(reader, name, ocr_samples(path, CFG.interval_s, CFG.long_side),
                                    duration_s=duration)
    return out


@pytest.mark.parametrize("name", ["flat", "busy", "moving", "slides"])
def test_each_text_is_found_at_the_right_time(name: str, videos: dict[str, tuple[Path, list[Shown]]],
                                              results: dict[str, ocr.ScreenTextResult]) -> None:
    res = results[name]
    for s in videos[name][1]:
        hits = [r for r in res.rows if similarity(r.text, s.text) >= 0.8]
        assert hits, f"{s.text!r} not read in {name}: {[r.text for r in res.rows]}"
        best = min(hits, key=lambda r: abs(r.start_s - s.start_s) + abs(r.end_s - s.end_s))
        assert abs(best.start_s - s.start_s) <= 1.0 and abs(best.end_s - s.end_s) <= 1.0, (s, best)
        assert 0.0 <= best.box[0] < best.box[2] <= 1.0 and 0.0 <= best.box[1] < best.box[3] <= 1.0  # type: ignore[index]
        assert best.model == res.model_id and best.video_id == name
    # each shown text is one row, not one per frame (the testsrc2 clock in "busy" aside)
    for s in videos[name][1]:
        assert sum(similarity(r.text, s.text) >= 0.8 for r in res.rows) == 1, s


def test_video_without_text_has_no_rows(results: dict[str, ocr.ScreenTextResult]) -> None:
    assert results["notext"].rows == []
    assert results["notext"].read >= 1


def test_unchanged_frames_are_not_read_again(results: dict[str, ocr.ScreenTextResult]) -> None:
    slides = results["slides"]
    # 4 slides over 12 s at 2 candidates/s: one read per slide, plus the 10 s refresh
    assert slides.candidates >= 24 and slides.read <= 6 and slides.same >= 18
    flat = results["flat"]   # text appears/disappears at 1, 3, 5, 6, 9, 10 s
    assert flat.read <= 9 and flat.same >= flat.candidates - 9
    moving = results["moving"]   # the text moves every frame: reads capped at one per second
    assert moving.skipped >= 5 and moving.read <= 10


@pytest.mark.parametrize("name", ["flat", "slides", "moving"])
def test_change_gate_on_decoder_grey_decides_as_on_rgb(name: str,
                                                       videos: dict[str, tuple[Path, list[Shown]]]) -> None:
    # The decode reader hands the gate swscale's half-size grey frame (cheap), tests and the
    # in-process path give it RGB frames: both must decide alike.
    g_grey, g_rgb = ChangeGate(CFG), ChangeGate(CFG)
    got = [(g_grey.decide(t, grey), g_rgb.decide(t, rgb))
           for t, grey, rgb in ocr_candidates(videos[name][0], CFG.interval_s, CFG.long_side)]
    assert [a for a, _ in got] == [b for _, b in got]
    assert {a for a, _ in got} >= {"ocr", "same"}


def test_screen_rows_make_a_table_and_keyword_search_finds_each_text(
        tmp_path: Path, videos: dict[str, tuple[Path, list[Shown]]],
        results: dict[str, ocr.ScreenTextResult]) -> None:
    from vidsearch.indexer.keyword import KeywordIndex, build_keyword_index

    rows = [r for res in results.values() for r in res.rows]
    table = screen_text_table(rows, run_id="run-1")
    assert table.num_rows == len(rows) and set(table.column("video_id").to_pylist()) <= set(videos)
    build_keyword_index(keyword_docs(screen_text=table), tmp_path / "text")
    index = KeywordIndex.open(tmp_path / "text")
    for name, (_, shown) in videos.items():
        for s in shown:
            query = s.text.lstrip("- ").lower()
            hits = index.search(query, 5, modalities=["screen"])
            assert hits, query
            top = hits[0]
            assert top.video_id == name and abs(top.start_s - s.start_s) <= 1.0, (query, top)
