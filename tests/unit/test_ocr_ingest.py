"""OCR in the ingest pipeline without the OCR model: how the decode pass hands out OCR candidates,
which videos get the screen stage (resume rules), how OCR outcomes become rows and failures, and
the driver's pure helpers (chunk sizes, pool sizes).

The candidates must be exactly those a separate decode would give (``tests/ocr_tools.py``: the
frame nearest each 0.5 s, the change check on swscale's half-size grey copy, RGB at the OCR size),
each handed out once by the chunk it belongs to, whatever the reader decoded ahead, after a
reader restart, with the decord reader, on a rotated video; the clip frames of a pass with OCR
must equal those of a pass without; an OCR-only pass decodes no clip frame and skips what no
candidate needs.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from media_tools import ffmpeg
from ocr_tools import frame_times, ocr_candidates, pillow_video
from test_library import MODEL
from test_text_ingest import NOW, st, task, text_commit

from vidsearch.library import Library
from vidsearch.pipeline import readers
from vidsearch.pipeline.decode import ChildState, decode_chunk, ocr_bounds, plan_video
from vidsearch.pipeline.discover import make_task
from vidsearch.pipeline.driver import _chunk_jobs
from vidsearch.pipeline.ocr import OCR_CHUNK_S, OCR_ONLY_WINDOW_S, ChangeGate, TextBox, ocr_sample_indices
from vidsearch.pipeline.progress import Snapshot
from vidsearch.pipeline.ray_runner import OCR_GPU_SHARE, ocr_pool
from vidsearch.pipeline.readers import PyAVReader
from vidsearch.pipeline.resume import Selection, Todo, select_text_work
from vidsearch.pipeline.text import screen_outcome
from vidsearch.pipeline.types import ClipSpan, OcrChunk, TextOutcome, VideoPlan
from vidsearch.schemas.config import IngestCfg
from vidsearch.schemas.model_config import PreprocessCfg
from vidsearch.schemas.ocr_config import OcrCfg

PP = PreprocessCfg(img_size=32)
OCR = OcrCfg()


def counter_frames(seconds: int, rate: int, size: tuple[int, int]) -> Any:
    """A big digit that changes every second on a gradient (the change check reads each second)."""
    from PIL import Image, ImageDraw

    w, h = size
    base = np.tile(np.linspace(30, 200, w, dtype=np.uint8)[None, :, None], (h, 1, 3))
    for s in range(seconds):
        img = Image.fromarray(base.copy())
        ImageDraw.Draw(img).rectangle((20 + 30 * s, 20, 60 + 30 * s, 80), fill=(255, 255, 255))  # moves each second
        frame = np.asarray(img)
        for _ in range(rate):
            yield frame


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ocr_decode")
    v = {"counter": pillow_video(d / "counter.mp4", counter_frames(9, 10, (320, 176)), size=(320, 176), rate=10)}
    v["rot90"] = d / "rot90.mp4"
    ffmpeg("-display_rotation", "90", "-i", v["counter"], "-c", "copy", v["rot90"])
    # 40 s at 1080p-like aspect, B-frames (about half the pictures are non-reference).
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=192x108:rate=25:duration=40", "-c:v", "libx264", "-pix_fmt",
           "yuv420p", d / "long.mp4")
    v["long"] = d / "long.mp4"
    return v


def plan_of(path: Path, cfg: IngestCfg, *, ocr: OcrCfg | None = OCR, ocr_only: bool = False) -> VideoPlan:
    return plan_video(make_task(os.fsencode(path)), cfg, PP, ocr, ocr_only=ocr_only)  # type: ignore[arg-type]


def decode_all(plan: VideoPlan, cfg: IngestCfg, step: int, ocr: OcrCfg | None = OCR) -> list[Any]:
    state = ChildState()
    n = len(plan.clips)
    out = [decode_chunk(plan, lo, min(n, lo + step), cfg, PP, state, ocr) for lo in range(0, n, step)]
    state.reset()
    return out


def reference(path: Path) -> tuple[list[float], str, list[np.ndarray]]:
    """What a separate decode makes of the candidates: times, gate decisions, RGB frames read."""
    gate, times, codes, frames = ChangeGate(OCR), [], "", []
    for t, grey, rgb in ocr_candidates(path, OCR.interval_s, OCR.long_side):
        d = gate.decide(t, grey)
        times.append(t)
        codes += {"ocr": "o", "same": "s", "skip": "k"}[d]
        if d == "ocr":
            frames.append(rgb)
    return times, codes, frames


def joined(chunks: list[Any]) -> tuple[list[float], str, list[np.ndarray]]:
    times = [t for c in chunks for t in c.ocr.times]
    codes = "".join(c.ocr.decisions for c in chunks)
    frames = [f for c in chunks if c.ocr_frames is not None for f in c.ocr_frames]
    assert all(c.ocr.error is None for c in chunks)
    assert all((c.ocr_frames is None and c.ocr.n_read == 0) or len(c.ocr_frames) == c.ocr.n_read for c in chunks)
    return times, codes, frames


def test_the_decode_pass_hands_out_the_candidates_a_separate_decode_gives(videos: dict[str, Path]) -> None:
    cfg = IngestCfg(clip_seconds=1.0, stride=1.0)
    plan = plan_of(videos["counter"], cfg)
    pts = frame_times(videos["counter"])
    assert plan.ocr is not None and list(plan.ocr.indices) == ocr_sample_indices(pts, 0.5)
    assert plan.ocr.count == 19 and plan.ocr.size == (320, 176)  # 0, 0.5, ..., 8.5 and the last frame (8.9 s)
    chunks = decode_all(plan, cfg, step=2)
    times, codes, frames = joined(chunks)
    ref_times, ref_codes, ref_frames = reference(videos["counter"])
    assert times == pytest.approx(ref_times) and codes == ref_codes
    assert codes.count("o") == 9  # a change every second, read at most once a second
    assert len(frames) == len(ref_frames)
    for a, b in zip(frames, ref_frames, strict=True):
        assert a.shape == (176, 320, 3) and np.abs(a.astype(int) - b).max() <= 1
    # Each chunk hands out the candidates of its own time range, in order.
    for c in chunks:
        a, b = ocr_bounds(plan, c.clip_lo, c.clip_hi)
        idx = [i for i in plan.ocr.indices if i >= a and (b is None or i < b)]
        assert list(c.ocr.times) == pytest.approx([plan.ocr.times[plan.ocr.indices.index(i)] for i in idx])
    # The clip frames are those of a pass without OCR.
    plain = decode_all(plan_of(videos["counter"], cfg, ocr=None), cfg, step=2, ocr=None)
    for c, p in zip(chunks, plain, strict=True):
        np.testing.assert_array_equal(c.frames, p.frames)
        assert c.kept == p.kept and not c.truncated and p.ocr is None and p.ocr_frames is None


def test_overlapping_clips_and_a_restarted_reader_hand_each_candidate_out_once(videos: dict[str, Path]) -> None:
    """Clips overlap (stride < length): the reader decodes past a chunk's range, and those
    candidates wait for their own chunk. A fresh child state (a restarted decode process) takes
    over mid-video: it hands out only the candidates from its chunk on, the first one read."""
    cfg = IngestCfg(clip_seconds=2.0, stride=1.0)
    plan = plan_of(videos["counter"], cfg)
    whole = joined(decode_all(plan, cfg, step=2))
    assert whole[0] == pytest.approx(list(plan.ocr.times)) and whole[1] == reference(videos["counter"])[1]
    n = len(plan.clips)
    first = decode_chunk(plan, 0, 2, cfg, PP, ChildState(), OCR)
    fresh = ChildState()
    rest = [decode_chunk(plan, lo, min(n, lo + 2), cfg, PP, fresh, OCR) for lo in range(2, n, 2)]
    times = [t for c in [first, *rest] for t in c.ocr.times]
    assert times == pytest.approx(list(plan.ocr.times))
    assert rest[0].ocr.decisions[0] == "o"  # a new change check starts by reading


def test_decord_reader_hands_out_the_same_candidates(videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(readers.DECODER_ENV, "decord")
    cfg = IngestCfg(clip_seconds=1.0, stride=1.0)
    plan = plan_of(videos["counter"], cfg)
    chunks = decode_all(plan, cfg, step=3)
    assert {c.decoder for c in chunks} == {"decord"}
    times, codes, frames = joined(chunks)
    ref_times, ref_codes, ref_frames = reference(videos["counter"])
    assert times == pytest.approx(ref_times) and codes == ref_codes
    for a, b in zip(frames, ref_frames, strict=True):
        assert a.shape == b.shape and np.abs(a.astype(int) - b).mean() < 1.0


def test_ocr_frames_of_a_rotated_video_are_upright(videos: dict[str, Path]) -> None:
    cfg = IngestCfg(clip_seconds=1.0, stride=1.0)
    plan = plan_of(videos["rot90"], cfg)
    assert plan.probe.rotation in (90, 270) and plan.ocr.size == (176, 320)  # as displayed
    chunk = decode_all(plan, cfg, step=9)[0]
    upright = reference(videos["counter"])[2][0]  # the same picture, never rotated
    got = chunk.ocr_frames[0]
    assert got.shape == (320, 176, 3)
    turned = [np.rot90(upright, k) for k in range(4)]
    diffs = [np.abs(got.astype(int) - t).mean() if t.shape == got.shape else np.inf for t in turned]
    # The reader's own upright frame says which turn is right: the OCR frame must match it.
    clip = chunk.frames[0][0].astype(int)  # (S, S, 3) model input of frame 0
    from vidsearch.pipeline.readers import resize_uint8

    small = [resize_uint8(t[None], PP)[0].astype(int) if t.shape == got.shape else None for t in turned]
    best = min((k for k in range(4) if small[k] is not None), key=lambda k: np.abs(small[k] - clip).mean())
    assert int(np.argmin(diffs)) == best and diffs[best] < 2.0


def test_an_ocr_only_pass_decodes_no_clip_frame_and_skips_what_no_candidate_needs(videos: dict[str, Path]) -> None:
    cfg = IngestCfg(clip_seconds=4.0, stride=4.0, segment="shots")  # shots: never run for the OCR pass
    plan = plan_of(videos["long"], cfg, ocr_only=True)
    assert plan.ocr_only and [round(c.end_s - c.start_s) for c in plan.clips] == [16, 16, 8]
    assert all(c.segment == "fixed" for c in plan.clips) and OCR_ONLY_WINDOW_S == 16
    opened: list[PyAVReader] = []
    orig = readers.open_pyav

    def spy(*a: Any) -> PyAVReader:
        opened.append(orig(*a))
        return opened[-1]

    readers.READERS["pyav"] = spy
    try:
        chunks = decode_all(plan, cfg, step=1)
    finally:
        readers.READERS["pyav"] = orig
    assert all(c.frames is None and c.kept == [] for c in chunks)
    times, codes, _ = joined(chunks)
    assert times == pytest.approx(list(plan.ocr.times)) and len(times) == 81
    # Only the candidates and the reference pictures were decoded: x264's non-reference B
    # pictures that no candidate needs were dropped before the decoder.
    (r,) = opened
    decoded = sum(r.must)
    assert r.skip and 81 <= decoded < 0.8 * plan.probe.frame_count, (decoded, plan.probe.frame_count)


def span(i: int, start: float, end: float) -> ClipSpan:
    return ClipSpan(i, int(start * 10), int(end * 10), start, end, (int(start * 10),), (start,), False, "fixed")


def test_chunks_of_a_video_with_ocr_hold_at_most_ocr_chunk_s_of_it() -> None:
    clips = [span(i, 4.0 * i, 4.0 * (i + 1)) for i in range(16)]
    assert [(j.lo, j.hi) for j in _chunk_jobs("v", clips, 16, ocr=False)] == [(0, 16)]
    jobs = _chunk_jobs("v", clips, 16, ocr=True)
    assert [(j.lo, j.hi) for j in jobs] == [(0, 4), (4, 8), (8, 12), (12, 16)] and OCR_CHUNK_S == 16
    three = [(i, min(16, i + 3)) for i in range(0, 16, 3)]
    assert [(j.lo, j.hi) for j in _chunk_jobs("v", clips, 3, ocr=True)] == three
    # A clip longer than OCR_CHUNK_S is a chunk of its own.
    assert [(j.lo, j.hi) for j in _chunk_jobs("v", [span(0, 0, 60), span(1, 60, 62)], 16, ocr=True)] == [(0, 1), (1, 2)]


def test_ocr_pool_sizes() -> None:
    cfg = OcrCfg()
    # CPU: one worker per 4 CPUs, 1 thread each, reserved as far as the decode pool keeps a CPU.
    assert ocr_pool(16, 0, 1, cfg, None, cuda_provider=False)[:3] == (4, 0.0, 1.0)
    n, gpus, cpus, c = ocr_pool(2, 0, 1, cfg, None, cuda_provider=False)
    assert (n, gpus, cpus, c.threads, c.device) == (1, 0.0, 0.0, 1, "cpu")  # unreserved on a 2-core machine
    n, gpus, cpus, c = ocr_pool(16, 0, 1, OcrCfg(threads=2), 3, cuda_provider=False)
    assert (n, cpus, c.threads) == (3, 2.0, 2)
    # GPUs with onnxruntime-gpu: one per GPU at its share; without the provider, CPU actors.
    n, gpus, cpus, c = ocr_pool(16, 2, 0, cfg, None, cuda_provider=True)
    assert (n, gpus, c.device) == (2, OCR_GPU_SHARE, "cuda")
    assert ocr_pool(16, 2, 0, cfg, None, cuda_provider=False)[3].device == "cpu"
    assert ocr_pool(16, 2, 0, OcrCfg(device="cpu"), None, cuda_provider=True)[1] == 0.0


def test_select_text_work_screen_rules() -> None:
    sel = Selection(todo=[Todo(task("new"))], searchable=[task(v) for v in (
        "read", "blank", "other", "fail1", "fail2", "never")])
    state = {(v, "subtitle"): st(v, "subtitle", "none") for v in ("read", "blank", "other", "fail1", "fail2", "never")}
    state |= {("read", "screen"): st("read", "screen", "ok", "ocr@a"),
              ("blank", "screen"): st("blank", "screen", "none", "ocr@a"),   # no text: done all the same
              ("other", "screen"): st("other", "screen", "ok", "ocr@b"),     # other settings
              ("fail1", "screen"): st("fail1", "screen", "failed", "ocr@a", 1, "OcrError"),
              ("fail2", "screen"): st("fail2", "screen", "failed", "ocr@a", 2, "OcrDecodeError"),
              ("read", "speech"): st("read", "speech", "ok", "m2")}
    kw: dict[str, Any] = {"retry_failed": False, "max_attempts": 2}
    t = select_text_work(sel, state, stages={"screen": "ocr@a"}, redo_other_model=frozenset(), **kw)
    assert t.work == {"new": {"subtitle": 1, "screen": 1}, "fail1": {"screen": 2}, "never": {"screen": 1}}
    c = t.of("screen")
    assert (c.done_before, c.other_model, c.failed_before, c.other_models) == (2, 1, 1, {"ocr@b": 1})
    # --reocr redoes other settings, not other speech models; --retranscribe the reverse.
    t = select_text_work(sel, state, stages={"screen": "ocr@a", "speech": "m1"}, redo_other_model=frozenset({"screen"}),
                         **kw)
    assert t.work["other"] == {"screen": 1, "speech": 1} and "speech" not in t.work.get("read", {})
    assert t.of("speech").other_model == 1
    t = select_text_work(sel, state, stages={"screen": "ocr@a", "speech": "m1"}, redo_other_model=frozenset({"speech"}),
                         **kw)
    assert t.work["read"] == {"speech": 1} and "screen" not in t.work["other"]


def box(text: str, conf: float = 0.9) -> TextBox:
    return TextBox(text, conf, (0.1, 0.1, 0.5, 0.2))


def test_screen_outcome_joins_the_chunks_readings_in_time_order() -> None:
    parts = [(OcrChunk((0.0, 0.5, 1.0, 1.5), "oskk"), [[box("EXIT ONLY")]]),
             (OcrChunk((2.0, 2.5, 3.0), "oso"), [[box("EXIT 0NLY")], [box("WAY OUT"), box("EXIT ONLY")]]),
             (OcrChunk((3.5,), "s"), [])]
    out = screen_outcome("v", parts, OcrCfg(), model_id="eng", status_model="eng@x", duration_s=3.8, work_s=1.5)
    assert (out.kind, out.status, out.model, out.media_s, out.work_s) == ("screen", "ok", "eng@x", 3.8, 1.5)
    rows = {r.text: (r.start_s, r.end_s, r.model) for r in out.rows}
    # One row per line over the chunks (a misreading outvoted, unchanged frames extend it), the
    # last one capped at the video's end.
    assert rows == {"EXIT ONLY": (0.0, 3.8, "eng"), "WAY OUT": (3.0, 3.8, "eng")}
    assert out.notes == "8 candidates: 3 read, 3 unchanged, 2 changed too soon"
    none = screen_outcome("v", [(OcrChunk((0.0, 0.5), "os"), [[]])], OcrCfg(), model_id="eng",
                          status_model="eng@x", duration_s=1.0)
    assert none.status == "none" and none.rows == ()


def test_a_failed_screen_stage_is_a_failure_of_stage_ocr(tmp_path: Path) -> None:
    lib = Library(tmp_path / "lib")
    failed = TextOutcome("a", "screen", "failed", model="eng@x", error_type="OcrError", error_message="boom")
    with lib.lock():
        lib.init(MODEL)
        text_commit(lib, [failed], with_clips="a")
        text_commit(lib, [TextOutcome("b", "screen", "failed", model="eng@x", error_type="OcrDecodeError",
                                      error_message="bad")], refresh=False)  # the catalog lags this one
    want = [("a", "ocr", "OcrError"), ("b", "ocr", "OcrDecodeError")]
    with lib.open_catalog_readonly() as r:
        assert r.stale is not None  # the second commit comes from its shard, in memory
        assert sorted(r.con.execute("SELECT video_id, stage, error_type FROM failures").fetchall()) == want
    with lib.lock():
        lib.refresh_catalog()
    with lib.connect_catalog() as con:
        assert sorted(con.execute("SELECT video_id, stage, error_type FROM failures").fetchall()) == want


def test_ocr_settings_hash_follows_what_changes_the_rows() -> None:
    base = OcrCfg().fingerprint()
    assert len(base) == 8 and OcrCfg(threads=3, device="cpu").fingerprint() == base
    assert OcrCfg(det_side=1280).fingerprint() != base and OcrCfg(interval_s=1.0).fingerprint() != base


def test_progress_line_shows_ocr() -> None:
    snap = Snapshot(videos_settled=1, videos_total=3, clips=10, failed=0, elapsed_s=10.0, eta_s=None,
                    ocr_read=12, ocr_waiting=5)
    assert "OCR 12 frames read (1.2/s), 5 waiting" in snap.line()
    assert "OCR" not in Snapshot(1, 3, 10, 0, 10.0, None).line()
    assert NOW.tzinfo is dt.UTC
