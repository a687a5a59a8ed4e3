"""Subtitle reader: real sidecar files (pysubs2) and embedded streams in ffmpeg/PyAV-made videos."""

from __future__ import annotations

import fractions
import os
from pathlib import Path

import pytest
from media_tools import ffmpeg, lavfi_video

from vidsearch.pipeline.subtitles import (
    SubtitleLimits,
    clean_text,
    decode_text,
    find_sidecars,
    payload_text,
    read_subtitles,
)

SRT = """1
00:00:01,000 --> 00:00:02,500
<i>Hello</i> <font color="red">world</font>

2
00:00:03,000 --> 00:00:04,200
{\\an8}Second line
with a break
"""

VTT = """WEBVTT

NOTE this comment must not reach the text

00:00:01.000 --> 00:00:02.000
<v Roger>Hi <c.yellow>there</c> <00:00:01.500>friend

00:00:03.000 --> 00:00:04.000 align:start
Fish &amp; chips
"""

ASS = """[Script Info]
ScriptType: v4.00+

[V4+ Styles]
Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, \
Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, \
MarginV, Encoding
Style: Default,Arial,20,&H00FFFFFF,&H000000FF,&H00000000,&H00000000,0,0,0,0,100,100,0,0,1,2,2,2,10,10,10,1

[Events]
Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text
Dialogue: 0,0:00:01.00,0:00:02.00,Default,,0,0,0,,{\\pos(10,10)\\b1}Bold{\\b0} words\\Nnext line
Comment: 0,0:00:01.00,0:00:02.00,Default,,0,0,0,,a hidden comment
Dialogue: 0,0:00:03.00,0:00:04.00,Default,,0,0,0,,{\\p1}m 0 0 l 100 0 100 100 0 100{\\p0}
"""


def _texts(result, track_prefix: str) -> list[tuple[float, float, str]]:
    return [(s.start_s, s.end_s, s.text) for s in result.segments if s.track.startswith(track_prefix)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("subs")
    lavfi_video(d / "clip.mp4", seconds=5, rate=10)
    return d


def test_clean_text_strips_tags_and_entities() -> None:
    assert clean_text("{\\i1}Hi{\\i0}\\Nthere &amp; <b>you</b>") == "Hi there & you"
    assert clean_text("{\\p1}m 0 0 l 10 10{\\p0}Text") == "Text"
    assert clean_text("<00:00:01.500>word <c.red>two</c>") == "word two"
    assert clean_text("a\x1b[2Jb") == "a [2Jb"  # control characters never reach the catalog
    assert len(clean_text("x" * 5000, max_chars=100)) == 100


@pytest.mark.parametrize(("text", "enc"), [
    ("Café déjà vu, garçon très élégant. À bientôt !", "cp1252"),
    ("Привет, как дела? Хорошая погода сегодня.", "cp1251"),
    ("Grüße aus München", "utf-16"),
    ("Grüße aus München", "utf-8-sig"),
])
def test_decode_text_legacy_encodings(text: str, enc: str) -> None:
    decoded, used = decode_text(text.encode(enc))
    assert decoded.lstrip("\ufeff") == text
    assert used != "utf-8"


def test_sidecars_srt_vtt_ass_and_language(folder: Path) -> None:
    (folder / "clip.srt").write_text(SRT, encoding="utf-8")
    (folder / "clip.en.vtt").write_text(VTT, encoding="utf-8")
    (folder / "clip.pt-BR.forced.ass").write_text(ASS, encoding="utf-8")
    (folder / "clip.2020.srt").write_text(SRT, encoding="utf-8")  # belongs to "clip.2020.mp4", not to clip.mp4
    (folder / "other.srt").write_text(SRT, encoding="utf-8")
    sidecars, notes = find_sidecars(folder / "clip.mp4")
    assert [(Path(os.fsdecode(s.path)).name, s.fmt, s.language) for s in sidecars] == [
        ("clip.en.vtt", "vtt", "en"), ("clip.pt-BR.forced.ass", "ass", "pt-br"), ("clip.srt", "srt", None)]
    assert notes == []
    r = read_subtitles(os.fsencode(folder / "clip.mp4"), "vid")
    assert _texts(r, "sidecar:clip.srt") == [(1.0, 2.5, "Hello world"), (3.0, 4.2, "Second line with a break")]
    assert _texts(r, "sidecar:clip.en.vtt") == [(1.0, 2.0, "Hi there friend"), (3.0, 4.0, "Fish & chips")]
    assert _texts(r, "sidecar:clip.pt-BR.forced.ass") == [(1.0, 2.0, "Bold words next line")]
    assert all(s.source == "subtitle" and s.video_id == "vid" for s in r.segments)
    assert len({s.segment_id for s in r.segments}) == len(r.segments)
    # a rerun gives the same ids (nothing rewritten)
    assert [s.segment_id for s in read_subtitles(os.fsencode(folder / "clip.mp4"), "vid").segments] == \
        [s.segment_id for s in r.segments]
    for name in ("clip.srt", "clip.en.vtt", "clip.pt-BR.forced.ass", "clip.2020.srt", "other.srt"):
        (folder / name).unlink()


def test_non_utf8_srt_is_decoded_and_reported(folder: Path) -> None:
    srt = "1\n00:00:01,000 --> 00:00:02,000\nCafé déjà vu, garçon très élégant.\n"
    (folder / "clip.fr.srt").write_bytes(srt.encode("cp1252"))
    try:
        r = read_subtitles(os.fsencode(folder / "clip.mp4"), "vid")
        assert _texts(r, "sidecar:clip.fr.srt") == [(1.0, 2.0, "Café déjà vu, garçon très élégant.")]
        assert [(n.kind, n.message) for n in r.notes if n.track == "sidecar:clip.fr.srt"] == [
            ("encoding", "decoded as cp1252")]
    finally:
        (folder / "clip.fr.srt").unlink()


def test_hostile_sidecars(folder: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.srt"
    secret.write_text("1\n00:00:01,000 --> 00:00:02,000\nprivate words\n")
    (folder / "clip.srt").symlink_to(secret)       # link out of the folder: skipped
    os.mkfifo(folder / "clip.en.srt")              # a FIFO: must not block
    (folder / "clip.de.srt").write_bytes(os.urandom(3000))  # garbage
    (folder / "clip.it.srt").write_text("1\n00:00:01,000 --> 00:00:02,000\n" + "word " * 400)  # over the byte cap
    try:
        r = read_subtitles(os.fsencode(folder / "clip.mp4"), "vid", limits=SubtitleLimits(max_file_bytes=1000))
        assert not any("private" in s.text for s in r.segments)
        kinds = {(n.track, n.kind) for n in r.notes}
        assert ("sidecar:clip.srt", "skipped") in kinds
        assert ("sidecar:clip.en.srt", "error") in kinds
        assert ("sidecar:clip.it.srt", "cut") in kinds
        assert not [s for s in r.segments if s.track == "sidecar:clip.de.srt" and "word" in s.text]
        cut = [s for s in r.segments if s.track == "sidecar:clip.it.srt"]
        assert cut and len(cut[0].text) < 1000
    finally:
        for name in ("clip.srt", "clip.en.srt", "clip.de.srt", "clip.it.srt"):
            (folder / name).unlink()


def test_symlink_inside_folder_is_read(folder: Path) -> None:
    (folder / "real.srt.txt").write_text(SRT)
    (folder / "clip.srt").symlink_to(folder / "real.srt.txt")
    try:
        r = read_subtitles(os.fsencode(folder / "clip.mp4"), "vid")
        assert [s.text for s in r.segments][:1] == ["Hello world"]
    finally:
        (folder / "clip.srt").unlink()
        (folder / "real.srt.txt").unlink()


def test_event_cap(folder: Path) -> None:
    srt = "".join(f"{i + 1}\n00:00:{i:02d},000 --> 00:00:{i:02d},500\nline {i}\n\n" for i in range(30))
    (folder / "clip.srt").write_text(srt)
    try:
        r = read_subtitles(os.fsencode(folder / "clip.mp4"), "vid", limits=SubtitleLimits(max_events=10))
        assert len(r.segments) == 10
        assert [n.kind for n in r.notes] == ["cut"]
    finally:
        (folder / "clip.srt").unlink()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("embedded")
    (d / "in.srt").write_text(SRT)
    mov = d / "movtext.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=10:duration=5", "-i", d / "in.srt",
           "-map", "0", "-map", "1", "-c:v", "libx264", "-c:s", "mov_text", "-metadata:s:s:0", "language=eng", mov)
    mkv = d / "tracks.mkv"
    ffmpeg("-i", mov, "-i", d / "in.srt", "-map", "0:v", "-map", "1", "-map", "1", "-map", "1", "-c:v", "copy",
           "-c:s:0", "srt", "-c:s:1", "ass", "-c:s:2", "webvtt", "-metadata:s:s:1", "language=ger", mkv)
    (d / "in.srt").unlink()
    return {"mov": mov, "mkv": mkv, "dir": d}


def test_embedded_mov_text(embedded: dict[str, Path]) -> None:
    r = read_subtitles(os.fsencode(embedded["mov"]), "vid")
    assert _texts(r, "stream:") == [(1.0, 2.5, "Hello world"), (3.0, 4.2, "Second line with a break")]
    assert {s.track for s in r.segments} == {"stream:1:mov_text"}
    assert {s.language for s in r.segments} == {"eng"}
    assert r.notes == []


def test_embedded_subrip_ass_webvtt(embedded: dict[str, Path]) -> None:
    r = read_subtitles(os.fsencode(embedded["mkv"]), "vid")
    by_track: dict[str, list[str]] = {}
    for s in r.segments:
        by_track.setdefault(s.track.split(":")[2], []).append(s.text)
    assert by_track == {c: ["Hello world", "Second line with a break"] for c in ("srt", "ssa", "webvtt")}
    assert {s.language for s in r.segments if s.track.endswith("ssa")} == {"ger"}


def test_bitmap_subtitles_are_skipped_with_a_note(tmp_path: Path) -> None:
    import av
    import numpy as np

    path = tmp_path / "bitmap.mkv"
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=10)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        s = out.add_stream("dvd_subtitle")
        for _ in range(10):
            for p in v.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")):
                out.mux(p)
        pk = av.Packet(b"\x00\x10" + b"\x00" * 14)
        pk.stream, pk.pts, pk.dts, pk.time_base = s, 0, 0, fractions.Fraction(1, 1000)
        out.mux(pk)
        for p in v.encode(None):
            out.mux(p)
    r = read_subtitles(os.fsencode(path), "vid")
    assert r.segments == []
    assert [(n.kind, "OCR" in n.message) for n in r.notes] == [("skipped", True)]


def test_payload_text_formats() -> None:
    assert payload_text("mov_text", b"\x00\x05Hello\x00\x00\x00\x0cstyl") == "Hello"
    assert payload_text("mov_text", b"\x00") == ""
    assert payload_text("ass", b"0,0,Default,,0,0,0,,{\\i1}Hi, you") == "{\\i1}Hi, you"
    assert payload_text("subrip", "Grüße".encode("cp1252")) == "Grüße"


def test_unopenable_video_still_reads_sidecars(tmp_path: Path) -> None:
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    (tmp_path / "broken.srt").write_text(SRT)
    r = read_subtitles(os.fsencode(tmp_path / "broken.mp4"), "vid")
    assert [s.text for s in r.segments] == ["Hello world", "Second line with a break"]
    assert [n.kind for n in r.notes] == ["error"]
