"""Decode stage internals: the resize equals the model's, the fast reader equals a full decode.

* ``resize_uint8`` (reused float buffer, one frame at a time) must give exactly the frames that
  make ``preprocess_frames`` a no-op resize: same model input, bit for bit.
* ``PyAVReader`` converts only the requested frames and, for h264, lets the decoder drop the
  non-reference pictures no clip samples (``skip_frame=NONREF``); every frame it hands out must
  equal the same frame of a plain full decode, across chunk boundaries, after a request behind
  the current position, and in the frame-counting fallback.
* ``decode_chunk`` gives the model's resize of a full decode's frames (PyAV; decord too where it
  does not seek into an open GOP).
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from media_tools import ffmpeg

from vidsearch.models.preprocess import preprocess_frames
from vidsearch.pipeline import readers
from vidsearch.pipeline.decode import ChildState, decode_chunk, plan_video
from vidsearch.pipeline.discover import make_task
from vidsearch.pipeline.readers import PyAVReader, resize_uint8
from vidsearch.schemas.config import IngestCfg
from vidsearch.schemas.model_config import PreprocessCfg


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(("h", "w"), [(1080, 1920), (360, 640), (97, 131), (300, 224), (2, 3), (224, 224)])
def test_resize_uint8_equals_preprocess_frames(interpolation: str, h: int, w: int) -> None:
    pp = PreprocessCfg(interpolation=interpolation)
    frames = np.random.default_rng(h * w).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    small = resize_uint8(frames, pp)
    assert small.shape == (2, pp.img_size, pp.img_size, 3) and small.dtype == np.uint8
    assert torch.equal(preprocess_frames(small, pp), preprocess_frames(frames, pp))


def test_resize_uint8_buffer_reuse_across_sizes() -> None:
    pp = PreprocessCfg()
    rng = np.random.default_rng(7)
    for h, w in [(120, 160), (90, 160), (120, 160)]:  # the cached buffer follows the frame size
        frames = rng.integers(0, 256, (3, h, w, 3), dtype=np.uint8)
        assert torch.equal(preprocess_frames(resize_uint8(frames, pp), pp), preprocess_frames(frames, pp))


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("decode")
    src = ("-f", "lavfi", "-i", "testsrc2=size=160x96:rate=30:duration=5,noise=alls=10:allf=t")
    v = {"bframes": d / "bframes.mp4", "strict": d / "strict.mkv", "hevc": d / "hevc.mp4"}
    # x264 defaults: B-frames, pyramid -> about half the pictures are non-reference.
    ffmpeg(*src, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "250", v["bframes"])
    ffmpeg(*src, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-x264-params",
           "bframes=6:b-pyramid=strict:keyint=40:open-gop=1", v["strict"])
    ffmpeg(*src, "-c:v", "libx265", "-pix_fmt", "yuv420p", "-x265-params", "log-level=none", v["hevc"])
    return v


def _full_decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _demuxer(path: Path) -> str:
    return "matroska" if path.suffix == ".mkv" else "mov"


@pytest.mark.parametrize("name", ["bframes", "strict", "hevc"])
def test_pyav_reader_equals_full_decode_across_chunks(videos: dict[str, Path], name: str) -> None:
    ref = _full_decode(videos[name])
    n = len(ref)
    chunks = [[0, 7, 14, 21], [30, 37, 44, 51], [52, 53, 90], [91, 119, n - 1]]
    keep = frozenset(i for c in chunks for i in c)
    r = PyAVReader(str(videos[name]), _demuxer(videos[name]), 0, keep)
    assert r.index_of is not None and r.skip == (name != "hevc")
    for idx in chunks:
        got, ended, err = r.get(idx)
        assert (ended, err) == (None, None)
        assert sorted(got) == idx
        for i in idx:
            np.testing.assert_array_equal(got[i], ref[i], err_msg=f"{name} frame {i}")
    # Behind the current position: reopens and is still exact; an index outside keep whose
    # packet may already have been skipped: reopens too.
    for idx in ([3, 8], [9, 60]):
        got, _, err = r.get(idx)
        assert err is None and all(np.array_equal(got[i], ref[i]) for i in idx)
    r.close()


def test_pyav_reader_counting_fallback_equals_full_decode(videos: dict[str, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PyAVReader, "_pts_index", lambda self: None)  # e.g. packets without pts
    ref = _full_decode(videos["bframes"])
    r = PyAVReader(str(videos["bframes"]), "mov", 0, frozenset(range(0, len(ref), 5)))
    assert r.index_of is None and not r.skip
    for idx in ([0, 5, 10], [15, 20, 140]):
        got, _, err = r.get(idx)
        assert err is None and all(np.array_equal(got[i], ref[i]) for i in idx)
    got, ended, err = r.get([145, len(ref) + 3])  # past the end: what exists, and where it ended
    assert sorted(got) == [145] and ended == len(ref) and err
    r.close()


def test_pyav_reader_past_the_end_reports_missing(videos: dict[str, Path]) -> None:
    ref = _full_decode(videos["bframes"])
    r = PyAVReader(str(videos["bframes"]), "mov", 0, frozenset({10, len(ref) - 1, len(ref) + 5}))
    got, ended, err = r.get([10, len(ref) - 1, len(ref) + 5])
    assert sorted(got) == [10, len(ref) - 1] and ended == len(ref) + 5 and err
    r.close()


def _chunks(plan: object, cfg: IngestCfg, pp: PreprocessCfg, reader: str,
            monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    monkeypatch.setenv(readers.DECODER_ENV, reader)
    n = len(plan.clips)  # type: ignore[attr-defined]
    state = ChildState()
    chunks = [decode_chunk(plan, lo, min(n, lo + 4), cfg, pp, state) for lo in range(0, n, 4)]  # type: ignore[arg-type]
    state.reset()
    assert all(c.decoder == reader and not c.truncated and c.error is None for c in chunks)
    assert [k for c in chunks for k in c.kept] == list(range(n))
    return [c.frames for c in chunks]  # type: ignore[misc]


@pytest.mark.parametrize("name", ["bframes", "strict"])
def test_decode_chunk_equals_resized_full_decode(videos: dict[str, Path], name: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pp = PreprocessCfg(img_size=32)
    cfg = IngestCfg(clip_seconds=0.5, stride=0.5)
    plan = plan_video(make_task(os.fsencode(videos[name])), cfg, pp)  # type: ignore[arg-type]
    ref = _full_decode(videos[name])
    want = [np.stack([resize_uint8(np.stack([ref[i] for i in c.frame_indices]), pp)
                      for c in plan.clips[lo: lo + 4]]) for lo in range(0, len(plan.clips), 4)]
    for got, exp in zip(_chunks(plan, cfg, pp, "pyav", monkeypatch), want, strict=True):
        np.testing.assert_array_equal(got, exp)
    if name == "bframes":
        # decord gives the same frames here. Not on "strict": its open GOPs make decord seek to a
        # non-IDR keyframe and decode the frames after it from missing references (wrong
        # pixels, silently) -- one more reason PyAV is the first reader.
        for got, exp in zip(_chunks(plan, cfg, pp, "decord", monkeypatch), want, strict=True):
            np.testing.assert_array_equal(got, exp)


def test_overlapping_clips_across_chunks_decode_once(videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """stride < clip length: the next chunk asks for frames behind the decoder's position; the
    reader keeps them (no reopen, no second decode from the start) and they stay exact."""
    opens = []
    orig = PyAVReader._open
    monkeypatch.setattr(PyAVReader, "_open", lambda self: (opens.append(1), orig(self))[1])
    pp = PreprocessCfg(img_size=32)
    cfg = IngestCfg(clip_seconds=1.0, stride=0.5)
    plan = plan_video(make_task(os.fsencode(videos["bframes"])), cfg, pp)  # type: ignore[arg-type]
    assert min(plan.clips[4].frame_indices) < max(plan.clips[3].frame_indices)  # chunks overlap
    ref = _full_decode(videos["bframes"])
    got = _chunks(plan, cfg, pp, "pyav", monkeypatch)
    assert len(opens) == 1
    want = [np.stack([resize_uint8(np.stack([ref[i] for i in c.frame_indices]), pp)
                      for c in plan.clips[lo: lo + 4]]) for lo in range(0, len(plan.clips), 4)]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("container", ["mp4", "ts"])
def test_h264_is_reference_matches_the_decoders_nonref_skipping(videos: dict[str, Path], tmp_path: Path,
                                                               container: str) -> None:
    """The coverage count relies on telling reference pictures from skippable ones: with
    skip_frame=NONREF on every packet, exactly the packets parsed as references come out."""
    from vidsearch.pipeline.readers import h264_is_reference

    path = videos["bframes"]
    if container == "ts":  # Annex B start codes instead of avcC length prefixes
        path = tmp_path / "bframes.ts"
        ffmpeg("-i", videos["bframes"], "-c", "copy", path)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        ext = s.codec_context.extradata or b""
        length_size = (ext[4] & 3) + 1 if len(ext) > 4 and ext[0] == 1 else 0
        assert length_size == (4 if container == "mp4" else 0)
        s.codec_context.skip_frame = "NONREF"
        refs, out = set(), set()
        for packet in c.demux(s):
            if packet.size:
                ref = h264_is_reference(bytes(packet), length_size)
                assert ref is not None
                if ref:
                    refs.add(packet.pts)
            out |= {f.pts for f in packet.decode()}
    assert out == refs and 0 < len(refs) < 150  # B-frames without references exist in this stream


class _BrokenReader:
    """A reader that opens but cannot read (as decord on some files): the next one must take over."""

    name = "broken"
    lost = 0
    available = None

    def get(self, indices: list[int], retain_from: int | None = None) -> readers.ReadResult:
        raise RuntimeError("cannot read this file")

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_reader_that_fails_on_the_first_chunk_hands_the_video_to_the_next(
        videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader interface: a new reader is one factory in READERS; a reader that opens a file
    but fails on its first chunk costs nothing but the attempt."""
    monkeypatch.setitem(readers.READERS, "broken", lambda plan, path, cfg, pp: _BrokenReader())
    monkeypatch.setenv(readers.DECODER_ENV, "broken")
    assert readers.reader_order()[0] == "broken"
    pp = PreprocessCfg(img_size=32)
    cfg = IngestCfg(clip_seconds=1.0, stride=1.0)
    plan = plan_video(make_task(os.fsencode(videos["bframes"])), cfg, pp)  # type: ignore[arg-type]
    state = ChildState()
    chunk = decode_chunk(plan, 0, 2, cfg, pp, state)
    state.reset()
    assert chunk.decoder == "pyav" and chunk.kept == [0, 1] and not chunk.truncated and chunk.error is None
    ref = _full_decode(videos["bframes"])
    np.testing.assert_array_equal(chunk.frames[0], resize_uint8(np.stack([ref[i] for i in plan.clips[0].frame_indices]),
                                                                pp))


def test_decode_worker_keeps_plans_and_plans_again_when_it_has_none(videos: dict[str, Path]) -> None:
    """Chunk requests name the video; the worker that planned it holds the plan (dropped after
    the last chunk). A worker without it (a restarted actor, or one taking over from a dead
    worker) plans the video again, and refuses if the new plan is not the driver's."""
    from vidsearch.pipeline.decode import DecodeWorker
    from vidsearch.pipeline.types import ChunkRequest, FramesChunk, VideoError

    pp = PreprocessCfg(img_size=32)
    cfg = IngestCfg(clip_seconds=1.0, stride=1.0)
    w = DecodeWorker(cfg, pp)
    try:
        plan = w.plan(make_task(os.fsencode(videos["bframes"])))  # type: ignore[arg-type]
        assert not isinstance(plan, VideoError) and len(plan.clips) == 5
        assert not plan.probe.__dict__.get("pts_s")  # the plan carries spans, not per-frame times
        n = len(plan.clips)
        first = [w.decode(ChunkRequest(plan.task, lo, min(n, lo + 2), n)) for lo in range(0, n, 2)]
        assert all(isinstance(c, FramesChunk) for c in first) and w.replans == 0
        assert plan.task.video_id not in w._plans  # dropped after the last chunk
        again = w.decode(ChunkRequest(plan.task, 2, 4, n))
        assert w.replans == 1 and isinstance(again, FramesChunk) and isinstance(first[1], FramesChunk)
        np.testing.assert_array_equal(again.frames, first[1].frames)
        w._plans.clear()
        wrong = w.decode(ChunkRequest(plan.task, 0, 2, n + 1))
        assert isinstance(wrong, VideoError) and wrong.error_type == "Unstable", wrong
    finally:
        w.close()


# ---- Coverage (docs/RELIABILITY.md rule 2): what the decoder drops is counted -----------------

def _packets(path: Path) -> list[tuple[int, int, int, bool | None]]:
    """(presentation index, file offset, size, is a reference picture) of every video packet."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        ed = s.codec_context.extradata
        length_size = (ed[4] & 3) + 1
        raw = [(p.pts, p.pos, p.size, readers.h264_is_reference(bytes(p), length_size))
               for p in c.demux(s) if p.size]
    rank = {pts: i for i, pts in enumerate(sorted(r[0] for r in raw))}
    return [(rank[pts], pos, size, ref) for pts, pos, size, ref in raw]


def _plain_decode_count(path: Path) -> int:
    """Frames a plain PyAV decode yields, every picture decoded, a failing packet skipped."""
    n = 0
    with av.open(str(path)) as c:
        for packet in c.demux(video=0):
            try:
                n += len(packet.decode())
            except av.error.FFmpegError:
                continue
    return n


def _decoded(path: Path, cfg: IngestCfg, pp: PreprocessCfg) -> tuple[int, int, list[int]]:
    """(probe's frame count, frames the decode stage counts as decoded, sampled indices)."""
    plan = plan_video(make_task(os.fsencode(path)), cfg, pp)  # type: ignore[arg-type]
    state = ChildState()
    try:
        n = len(plan.clips)
        chunks = [decode_chunk(plan, lo, min(n, lo + 2), cfg, pp, state) for lo in range(0, n, 2)]
    finally:
        state.reset()
    assert all(not c.truncated for c in chunks) and [k for c in chunks for k in c.kept] == list(range(n))
    sampled = sorted({i for c in plan.clips for i in c.frame_indices})
    return plan.probe.frame_count, min(c.decoded_frames for c in chunks), sampled


def test_damage_after_the_last_sampled_frame_is_counted(videos: dict[str, Path], tmp_path: Path) -> None:
    """The reader stops at the last frame a clip samples; the last chunk then decodes the rest of
    the stream, so packets that no longer decode at the very end are lost frames too (a fuzz
    mutant with its last 7 packets zeroed was "done" at 100 %)."""
    pp, cfg = PreprocessCfg(img_size=32), IngestCfg(clip_seconds=2.0, stride=2.0)
    n, decoded, sampled = _decoded(videos["bframes"], cfg, pp)
    assert decoded == n == _plain_decode_count(videos["bframes"])
    data = bytearray(videos["bframes"].read_bytes())
    tail = [p for p in _packets(videos["bframes"]) if p[0] > sampled[-1]][-3:]
    assert len(tail) == 3
    for _, pos, size, _ in tail:
        data[pos: pos + size] = bytes(size)  # NAL length 0: the decoder refuses the packet
    bad = tmp_path / "tail_zeroed.mp4"
    bad.write_bytes(bytes(data))
    assert _plain_decode_count(bad) == n - 3
    n2, decoded, _ = _decoded(bad, cfg, pp)
    assert (n2, decoded) == (n, n - 3)


def test_after_damage_no_picture_is_skipped(videos: dict[str, Path], tmp_path: Path) -> None:
    """Unsampled h264 non-reference pictures are skipped, and a skipped picture's loss cannot be
    seen; so once the stream shows damage, every later picture is decoded. Here a reference
    picture is destroyed, then a later unsampled non-reference one (its NAL header kept, its
    slice zeroed): a plain decode loses both, and so must the count."""
    pp, cfg = PreprocessCfg(img_size=32), IngestCfg(clip_seconds=2.0, stride=2.0)
    n, _, sampled = _decoded(videos["bframes"], cfg, pp)
    packets = _packets(videos["bframes"])  # in decode order
    keep = set(sampled)
    k_ref = next(k for k, p in enumerate(packets) if k > len(packets) // 4 and p[3] and p[0] not in keep)
    k_non = next(k for k, p in enumerate(packets) if k > k_ref + 5 and p[3] is False and p[0] not in keep)
    data = bytearray(videos["bframes"].read_bytes())
    _, pos, size, _ = packets[k_ref]
    data[pos: pos + size] = bytes(size)
    _, pos, size, _ = packets[k_non]
    data[pos + 5: pos + size] = bytes(size - 5)  # 4-byte length and NAL header (nal_ref_idc 0) kept
    bad = tmp_path / "two_damaged.mp4"
    bad.write_bytes(bytes(data))
    assert _plain_decode_count(bad) == n - 2  # the damage is what the test says it is
    n2, decoded, _ = _decoded(bad, cfg, pp)
    assert (n2, decoded) == (n, n - 2)
