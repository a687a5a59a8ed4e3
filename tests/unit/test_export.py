"""Exports to editing software (vidsearch.search.export / trim), checked by independent readers.

Every written file is read back by something other than the code that wrote it: a strict
regex-based CMX 3600 reader and a drop-frame calculator written here from SMPTE ST 12-1 (not
vidsearch's), ``xml.etree`` for FCPXML/xmeml attributes, ``csv`` for the Resolve CSV, and
OpenTimelineIO's own readers where they work (EDL, xmeml, .otio). Sources are real ffmpeg-made
videos at every rate the issue names, with and without a container start timecode.
"""

from __future__ import annotations

import csv
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlparse

import av
import numpy as np
import opentimelineio as otio
import pytest
from media_tools import ffmpeg

from vidsearch.search.export import (
    RESOLVE_CSV_COLUMNS,
    ExportError,
    ExportHit,
    export_timeline,
    plan_timeline,
    render,
    with_source_info,
)
from vidsearch.search.timecode import (
    TimecodeError,
    as_rate,
    conform_rate,
    frames_to_timecode,
    parse_timecode,
    timeline_rate,
)
from vidsearch.search.trim import keyframe_times, trim_hits

NTSC30, NTSC24, NTSC60 = Fraction(30000, 1001), Fraction(24000, 1001), Fraction(60000, 1001)


# ---- an independent timecode calculator (SMPTE ST 12-1), not vidsearch's -------------------------
def ref_tc_to_frames(tc: str, nominal: int) -> int:
    hh, mm, ss, ff = (int(x) for x in re.split(r"[:;]", tc))
    if ";" in tc:  # drop-frame: 2 labels (4 at 59.94) skipped each minute except every tenth
        drop = nominal // 15
        minutes = hh * 60 + mm
        return (hh * 3600 + mm * 60 + ss) * nominal + ff - drop * (minutes - minutes // 10)
    return (hh * 3600 + mm * 60 + ss) * nominal + ff


def ref_frames_to_df(frames: int, nominal: int) -> str:
    drop = nominal // 15
    per_10min = nominal * 600 - 9 * drop
    per_min = nominal * 60 - drop
    d, m = divmod(frames, per_10min)
    frames += 9 * drop * d + (drop * ((m - drop) // per_min) if m > drop else 0)
    ff = frames % nominal
    s = frames // nominal
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d};{ff:02d}"


# ---- media ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    path: Path
    rate: Fraction          # the rate the export must count it at
    tc: str | None          # container start timecode
    df: bool                # is that timecode (or the default) drop-frame


RATES = {  # name -> (lavfi rate, container timecode)
    "23.976": ("24000/1001", "01:00:00:00"),
    "24": ("24", None),
    "25": ("25", "10:00:00:00"),
    "29.97df": ("30000/1001", "00:59:59;00"),
    "29.97ndf": ("30000/1001", "01:00:00:00"),
    "30": ("30", None),
    "50": ("50", "01:00:00:00"),
    "59.94df": ("60000/1001", "00:09:59;56"),
    "60": ("60", None),
    "10": ("10", None),
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Source]:
    d = tmp_path_factory.mktemp("export_media")
    out: dict[str, Source] = {}
    for name, (rate, tc) in RATES.items():
        p = d / f"src_{name}.mp4"
        extra = ["-timecode", tc] if tc else []
        ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=64x48:rate={rate}:duration=6", "-c:v", "libx264",
               "-preset", "ultrafast", "-g", "12", "-pix_fmt", "yuv420p", *extra, p)
        r = as_rate(Fraction(rate))
        out[name] = Source(p, r, tc, bool(tc and ";" in tc) or (tc is None and r in (NTSC30, NTSC60)))
    # VFR: 30 fps for 2 s then 18 fps (an encoder time base fine enough to keep the gaps).
    vfr = d / "src_vfr.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=30:duration=6", "-vf",
           "settb=1/1000,setpts='N/(30-12*gt(N\\,60))/TB+gt(N\\,60)*(60/30-60/18)/TB'",
           "-fps_mode", "vfr", "-enc_time_base", "1/1000", "-c:v", "libx264", "-preset", "ultrafast",
           "-pix_fmt", "yuv420p", vfr)
    out["vfr"] = Source(vfr, NTSC24, None, False)  # average 20.8 fps -> nearest standard 23.976
    return out


def hits_for(src: Source, spans: list[tuple[float, float]] | None = None,
             query: str = "a red circle") -> list[ExportHit]:
    spans = spans or [(1.0, 2.5), (3.2, 4.0), (0.0, 0.7)]
    return [ExportHit(path=str(src.path), start_s=a, end_s=b, rank=i + 1, score=0.5 - 0.1 * i,
                      video_id=f"vid{i}", clip_id=1000 + i, query=query) for i, (a, b) in enumerate(spans)]


def tc_seconds(src: Source) -> float:
    """Seconds of the source's start timecode label."""
    if not src.tc:
        return 0.0
    return ref_tc_to_frames(src.tc, round(src.rate)) / float(src.rate)


# ---- timecode ---------------------------------------------------------------------------------------
def test_drop_frame_timecode_hand_values() -> None:
    # 29.97 DF: 10 minutes hold 17982 frames; the label after 00:00:59;29 is 00:01:00;02.
    assert frames_to_timecode(17982, NTSC30, True) == "00:10:00;00"
    assert frames_to_timecode(1800, NTSC30, True) == "00:01:00;02"
    assert frames_to_timecode(1799, NTSC30, True) == "00:00:59;29"
    assert frames_to_timecode(1800, NTSC30, False) == "00:01:00:00"
    assert frames_to_timecode(107892, NTSC30, True) == "01:00:00;00"
    # 59.94 DF drops four labels a minute.
    assert frames_to_timecode(3600, NTSC60, True) == "00:01:00;04"
    assert frames_to_timecode(35964, NTSC60, True) == "00:10:00;00"
    assert frames_to_timecode(24, NTSC24) == "00:00:01:00"
    assert frames_to_timecode(123, Fraction(10)) == "00:00:12:03"  # no SMPTE rate: plain labels
    assert parse_timecode("00:10:00;00", NTSC30) == (17982, True)
    assert parse_timecode("00:01:00;02", NTSC30) == (1800, True)
    assert parse_timecode("00:01:00:00", NTSC30) == (1800, False)
    assert parse_timecode("00:01:00;04", NTSC60) == (3600, True)
    for bad in ("00:01:00;00", "00:01:00;01", "00:00:00:30", "1:2:3", "00:60:00:00"):
        with pytest.raises(TimecodeError):
            parse_timecode(bad, NTSC30)
    with pytest.raises(TimecodeError):
        frames_to_timecode(10, Fraction(25), True)


@pytest.mark.parametrize("rate,df", [(NTSC30, True), (NTSC60, True), (NTSC30, False), (Fraction(25), False),
                                     (NTSC24, False), (Fraction(50), False), (Fraction(12), False)])
def test_timecode_agrees_with_independent_calculator(rate: Fraction, df: bool) -> None:
    nominal = round(rate)
    for frames in [0, 1, nominal - 1, nominal * 60 - 1, nominal * 60, nominal * 60 + 2, nominal * 600,
                   nominal * 601 + 7, 107891, 107892, 1_000_000, 2_589_407]:
        if frames >= 24 * 3600 * rate:  # labels wrap at 24 h
            continue
        tc = frames_to_timecode(frames, rate, df)
        if df:
            assert tc == ref_frames_to_df(frames, nominal)
        assert ref_tc_to_frames(tc, nominal) == frames
        assert parse_timecode(tc, rate) == (frames, df)


def test_rates_conform_and_timeline_rate() -> None:
    assert as_rate(29.97) == NTSC30 and as_rate(29.97002997) == NTSC30 and as_rate("24000/1001") == NTSC24
    assert as_rate(25.0) == 25 and as_rate(10.00001) == 10
    assert conform_rate(10.0) == (Fraction(10), None)
    r, note = conform_rate(22.79, variable=True)
    assert r == NTSC24 and note and "variable" in note
    r, note = conform_rate(7.3)  # an odd constant rate: nearest standard rate, with a note
    assert r == NTSC24 and note and "7.300" in note
    assert conform_rate(None)[0] == 25 and conform_rate(12.0) == (Fraction(12), None)
    assert timeline_rate([Fraction(10)] * 3) == 30
    assert timeline_rate([Fraction(12)]) == 24
    assert timeline_rate([Fraction(25), NTSC30, NTSC30]) == NTSC30
    assert timeline_rate([Fraction(25), NTSC30]) == 25  # tie: the best-ranked hit's rate


# ---- a strict CMX 3600 reader -----------------------------------------------------------------------
_EVENT = re.compile(r"^(\d{3})  (\S.{7}) V     C        (\d\d:\d\d:\d\d[:;]\d\d) (\d\d:\d\d:\d\d[:;]\d\d) "
                    r"(\d\d:\d\d:\d\d[:;]\d\d) (\d\d:\d\d:\d\d[:;]\d\d)$")


@dataclass
class EdlEvent:
    num: int
    src_in: str
    src_out: str
    rec_in: str
    rec_out: str
    comments: list[str]


def read_edl(text: str) -> tuple[str, str, list[EdlEvent]]:
    lines = text.splitlines()
    assert lines[0].startswith("TITLE: ") and lines[1] in ("FCM: DROP FRAME", "FCM: NON-DROP FRAME")
    events: list[EdlEvent] = []
    for line in lines[2:]:
        if not line:
            continue
        m = _EVENT.match(line)
        if m:
            events.append(EdlEvent(int(m[1]), m[3], m[4], m[5], m[6], []))
        else:
            assert line.startswith("* ") or line.startswith(" |C:"), f"stray line {line!r}"
            assert events, "comment before the first event"
            events[-1].comments.append(line)
    assert [e.num for e in events] == list(range(1, len(events) + 1))
    return lines[0][7:], lines[1], events


ALL = list(RATES) + ["vfr"]


@pytest.mark.parametrize("name", ALL)
def test_edl_every_rate(sources: dict[str, Source], tmp_path: Path, name: str) -> None:
    src = sources[name]
    hits = hits_for(src)
    rep = export_timeline(hits, tmp_path / "hits.edl")
    text = (tmp_path / "hits.edl").read_text()
    title, fcm, events = read_edl(text)
    assert title == "a red circle" and len(events) == len(hits)
    rate = rep.rate
    nominal = round(rate)
    assert fcm == ("FCM: DROP FRAME" if rep.drop_frame else "FCM: NON-DROP FRAME")
    assert rep.drop_frame == (rate in (NTSC30, NTSC60) and src.df)
    rec = 0
    for h, ev in zip(hits, events, strict=True):
        for tc in (ev.src_in, ev.src_out, ev.rec_in, ev.rec_out):
            assert (";" in tc) == rep.drop_frame
        s_in, s_out = ref_tc_to_frames(ev.src_in, nominal), ref_tc_to_frames(ev.src_out, nominal)
        # the source span is the hit's span, past the source's own start timecode, within a frame
        assert abs(s_in / float(rate) - (tc_seconds(src) + h.start_s)) <= 1 / float(rate) + 1e-9
        assert abs(s_out / float(rate) - (tc_seconds(src) + h.end_s)) <= 1 / float(rate) + 1e-9
        r_in, r_out = ref_tc_to_frames(ev.rec_in, nominal), ref_tc_to_frames(ev.rec_out, nominal)
        assert r_in == rec and r_out - r_in == s_out - s_in  # back to back, source and record agree
        rec = r_out
        assert f"* FROM CLIP NAME:  {src.path.name}" in ev.comments
        assert f"* FROM CLIP: {src.path}" in ev.comments
        assert f"* VIDSEARCH QUERY: {h.query}" in ev.comments
        marker = [c for c in ev.comments if c.startswith(" |C:")]
        assert marker == [f" |C:ResolveColorBlue |M:#{h.rank} {h.score:.3f} a red circle |D:{r_out - r_in}"]
    # OpenTimelineIO's own CMX reader agrees (event count, ranges within a frame)
    tl = otio.adapters.read_from_string(text, "cmx_3600", rate=float(rate))
    clips = list(tl.find_clips())
    assert len(clips) == len(hits)
    for h, c in zip(hits, clips, strict=True):
        got = c.source_range.start_time.to_seconds()
        assert abs(got - (tc_seconds(src) + h.start_s)) <= 1 / float(rate) + 1e-6


def test_edl_source_timecode_hand_values(tmp_path: Path) -> None:
    """A 29.97 DF source whose container starts at 00:09:00;00: a hit at frame 1800 is at
    00:10:00;00 (frame 17982 of the day); the same hit in a source without timecode at 00:01:00;02."""
    with_tc, without = tmp_path / "tc.mp4", tmp_path / "notc.mp4"
    for p, extra in ((with_tc, ["-timecode", "00:09:00;00"]), (without, [])):
        ffmpeg("-f", "lavfi", "-i", "color=c=gray:size=32x32:rate=30000/1001:duration=62", "-c:v", "libx264",
               "-preset", "ultrafast", "-pix_fmt", "yuv420p", *extra, p)
    start = 1800 * 1001 / 30000
    hits = [ExportHit(str(with_tc), start, start + 2, rank=1), ExportHit(str(without), start, start + 2, rank=2)]
    export_timeline(hits, tmp_path / "df.edl")
    _, fcm, events = read_edl((tmp_path / "df.edl").read_text())
    assert fcm == "FCM: DROP FRAME"
    assert events[0].src_in == "00:10:00;00" and events[0].rec_in == "00:00:00;00"
    assert events[1].src_in == "00:01:00;02"
    # and non-drop when asked: the same frames, other labels
    export_timeline(hits, tmp_path / "ndf.edl", drop_frame=False)
    _, fcm, events = read_edl((tmp_path / "ndf.edl").read_text())
    assert fcm == "FCM: NON-DROP FRAME" and events[1].src_in == "00:01:00:00"
    assert events[0].src_in == frames_to_timecode(17982, NTSC30, False) == "00:09:59:12"


# ---- OTIO native ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_otio_every_rate(sources: dict[str, Source], tmp_path: Path, name: str) -> None:
    src = sources[name]
    hits = hits_for(src)
    export_timeline(hits, tmp_path / "hits.otio")
    tl = otio.adapters.read_from_file(str(tmp_path / "hits.otio"))
    clips = list(tl.find_clips())
    assert len(clips) == len(hits)
    for h, c in zip(hits, clips, strict=True):
        assert c.source_range.start_time.rate == pytest.approx(float(src.rate))
        ref = c.media_reference
        assert unquote_to_bytes(urlparse(ref.target_url).path) == os.fsencode(src.path)
        assert ref.available_range.start_time.to_seconds() == pytest.approx(tc_seconds(src), abs=1e-6)
        off = c.source_range.start_time - ref.available_range.start_time
        assert abs(off.to_seconds() - h.start_s) <= 0.5 / float(src.rate) + 1e-9
        assert abs(c.source_range.duration.to_seconds() - (h.end_s - h.start_s)) <= 1 / float(src.rate) + 1e-9
        assert c.metadata["vidsearch"]["rank"] == h.rank and c.metadata["vidsearch"]["clip_id"] == str(h.clip_id)
        assert [m.name for m in c.markers] == [f"#{h.rank} {h.score:.3f}"]


# ---- FCP7 xmeml -------------------------------------------------------------------------------------
def xmeml_rate(el: ET.Element) -> Fraction:
    tb = int(el.findtext("rate/timebase") or 0)
    return Fraction(tb * 1000, 1001) if el.findtext("rate/ntsc") == "TRUE" else Fraction(tb)


@pytest.mark.parametrize("name", ALL)
def test_xmeml_every_rate(sources: dict[str, Source], tmp_path: Path, name: str) -> None:
    src = sources[name]
    hits = hits_for(src)
    rep = export_timeline(hits, tmp_path / "hits.xml")
    root = ET.parse(tmp_path / "hits.xml").getroot()
    assert root.tag == "xmeml"
    seq = root.find("./project/children/sequence")
    assert seq is not None and xmeml_rate(seq) == rep.rate
    assert seq.findtext("timecode/displayformat") == ("DF" if rep.drop_frame else "NDF")
    items = seq.findall("./media/video/track/clipitem")
    assert len(items) == len(hits)
    files: dict[str, ET.Element] = {}
    rec = 0
    for h, it in zip(hits, items, strict=True):
        f = it.find("file")
        assert f is not None
        if f.find("pathurl") is not None:
            files[f.get("id", "")] = f
        f = files[f.get("id", "")]
        url = urlparse(f.findtext("pathurl") or "")
        assert url.scheme == "file" and url.netloc == "localhost"
        assert unquote_to_bytes(url.path) == os.fsencode(src.path)
        r = xmeml_rate(it)
        assert xmeml_rate(f) == r
        # in/out count frames from the start of the media
        assert abs(int(it.findtext("in") or -1) / float(r) - h.start_s) <= 0.5 / float(r) + 1e-9
        assert abs(int(it.findtext("out") or -1) / float(r) - h.end_s) <= 1 / float(r) + 1e-9
        start, end = int(it.findtext("start") or -1), int(it.findtext("end") or -1)
        assert start == rec and end > start
        rec = end
        tc = f.find("timecode")
        assert tc is not None
        if src.tc and src.rate == r:  # the source keeps its own label and mode
            assert tc.findtext("string") == src.tc
            assert tc.findtext("displayformat") == ("DF" if src.df else "NDF")
        assert int(tc.findtext("frame") or -1) / float(r) == pytest.approx(tc_seconds(src), abs=1 / float(r))
    assert int(seq.findtext("duration") or -1) == rec
    markers = seq.findall("marker")
    assert [m.findtext("name") for m in markers] == [f"#{h.rank} {h.score:.3f}" for h in hits]
    assert all(m.findtext("comment") == "a red circle" for m in markers)
    # OpenTimelineIO's FCP7 reader reads it back: count and ranges within a frame
    tl = otio.adapters.read_from_file(str(tmp_path / "hits.xml"))
    clips = list(tl.find_clips())
    assert len(clips) == len(hits)
    for h, c in zip(hits, clips, strict=True):
        got = c.source_range.start_time - c.media_reference.available_range.start_time
        assert abs(got.to_seconds() - h.start_s) <= 1 / float(src.rate) + 1e-6


# ---- FCPXML -----------------------------------------------------------------------------------------
def fcpx_time(text: str | None) -> Fraction:
    assert text and text.endswith("s"), text
    return Fraction(text[:-1])


@pytest.mark.parametrize("name", ALL)
def test_fcpxml_every_rate(sources: dict[str, Source], tmp_path: Path, name: str) -> None:
    src = sources[name]
    hits = hits_for(src)
    rep = export_timeline(hits, tmp_path / "hits.fcpxml")
    raw = (tmp_path / "hits.fcpxml").read_text()
    assert raw.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE fcpxml>')
    root = ET.fromstring(raw)
    assert root.tag == "fcpxml" and root.get("version") == "1.9"
    formats = {f.get("id"): f for f in root.iter("format")}
    assets = {a.get("id"): a for a in root.iter("asset")}
    for f in formats.values():  # the OTIO adapter's bug: an empty frameDuration at 23.976/29.97
        assert fcpx_time(f.get("frameDuration")) > 0 and f.get("width") == "64" and f.get("height") == "48"
    seq = root.find("./library/event/project/sequence")
    assert seq is not None
    seq_fd = fcpx_time(formats[seq.get("format")].get("frameDuration"))
    assert seq_fd == 1 / rep.rate
    assert seq.get("tcFormat") == ("DF" if rep.drop_frame else "NDF")
    clips = seq.findall("./spine/asset-clip")
    assert len(clips) == len(hits)
    offset = Fraction(0)
    for h, c in zip(hits, clips, strict=True):
        asset = assets[c.get("ref")]
        assert unquote_to_bytes(urlparse(asset.get("src")).path) == os.fsencode(src.path)
        a_fd = fcpx_time(formats[asset.get("format")].get("frameDuration"))
        assert a_fd == 1 / src.rate
        a_start = fcpx_time(asset.get("start"))
        assert float(a_start) == pytest.approx(tc_seconds(src), abs=1e-6)
        start = fcpx_time(c.get("start"))
        assert abs(float(start - a_start) - h.start_s) <= 0.5 * float(a_fd) + 1e-9
        assert (start / a_fd).denominator == 1  # on a frame of the asset
        off, dur = fcpx_time(c.get("offset")), fcpx_time(c.get("duration"))
        assert off == offset and (off / seq_fd).denominator == 1 and (dur / seq_fd).denominator == 1
        assert abs(float(dur) - (h.end_s - h.start_s)) <= float(seq_fd) + float(a_fd) + 1e-9
        offset += dur
        assert c.get("tcFormat") == ("DF" if src.df else "NDF")
        (m,) = c.findall("marker")
        assert m.get("value") == f"#{h.rank} {h.score:.3f}" and m.get("note") == "a red circle"
        assert fcpx_time(m.get("start")) == start
    assert fcpx_time(seq.get("duration")) == offset


# ---- Resolve CSV ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_csv_every_rate(sources: dict[str, Source], tmp_path: Path, name: str) -> None:
    src = sources[name]
    hits = hits_for(src)
    rep = export_timeline(hits, tmp_path / "hits.csv")
    with open(tmp_path / "hits.csv", newline="") as f:
        rows = list(csv.DictReader(f))
        f.seek(0)
        assert next(csv.reader(f)) == list(RESOLVE_CSV_COLUMNS)
    assert len(rows) == len(hits)
    rec = 0
    for h, row in zip(hits, rows, strict=True):
        r = as_rate(Fraction(row["Source FPS"])) if "." not in row["Source FPS"] else as_rate(float(row["Source FPS"]))
        assert r == src.rate
        nominal = round(r)
        s_in = ref_tc_to_frames(row["Source In"], nominal) / float(r)
        s_out = ref_tc_to_frames(row["Source Out"], nominal) / float(r)
        assert abs(s_in - (tc_seconds(src) + h.start_s)) <= 0.5 / float(r) + 1e-9
        assert abs(s_out - (tc_seconds(src) + h.end_s)) <= 1 / float(r) + 1e-9
        assert (";" in row["Source In"]) == (src.df and r in (NTSC30, NTSC60))
        t_nominal = round(rep.rate)
        assert ref_tc_to_frames(row["Record In"], t_nominal) == rec
        rec = ref_tc_to_frames(row["Record Out"], t_nominal)
        assert row["Name"] == src.path.name and row["Marker"] == "Blue"
        assert f"#{h.rank} {h.score:.3f}" in row["Notes"] and "a red circle" in row["Notes"]


# ---- mixed rates, hostile names, bad requests -------------------------------------------------------
def test_mixed_rates_one_timeline(sources: dict[str, Source], tmp_path: Path) -> None:
    hits = [*hits_for(sources["29.97df"])[:1], *hits_for(sources["25"])[:1], *hits_for(sources["10"])[:1],
            *hits_for(sources["29.97df"])[1:2]]
    hits = [ExportHit(**{**h.__dict__, "rank": i + 1}) for i, h in enumerate(hits)]
    rep = export_timeline(hits, tmp_path / "mix.edl")
    assert rep.rate == NTSC30 and rep.drop_frame
    assert any("25, 10 fps" in w or "10, 25 fps" in w for w in rep.warnings)
    _, _, events = read_edl((tmp_path / "mix.edl").read_text())
    for h, ev in zip(hits, events, strict=True):  # every source, counted at the EDL's rate
        src = next(s for s in sources.values() if str(s.path) == h.path)
        assert abs(ref_tc_to_frames(ev.src_in, 30) / float(NTSC30) - (tc_seconds(src) + h.start_s)) <= 1 / 29.97 + 1e-9
    # FCPXML: every sequence time on a 29.97 frame, each clip's start on its own source's frame
    export_timeline(hits, tmp_path / "mix.fcpxml")
    root = ET.parse(tmp_path / "mix.fcpxml").getroot()
    fd = {f.get("id"): fcpx_time(f.get("frameDuration")) for f in root.iter("format")}
    assets = {a.get("id"): a for a in root.iter("asset")}
    for c in root.iter("asset-clip"):
        assert (fcpx_time(c.get("offset")) * NTSC30).denominator == 1
        assert (fcpx_time(c.get("start")) / fd[assets[c.get("ref")].get("format")]).denominator == 1
    export_timeline(hits, tmp_path / "mix.xml")
    seq = ET.parse(tmp_path / "mix.xml").getroot().find(".//sequence")
    assert seq is not None
    ends = [int(it.findtext("end") or 0) for it in seq.iter("clipitem")]
    assert int(seq.findtext("duration") or 0) == ends[-1]


def test_hostile_names_stay_data(sources: dict[str, Source], tmp_path: Path) -> None:
    """A quote (crashes OTIO's FCPXML writer), a newline and '|' (would break EDL lines), a
    spreadsheet formula and undecodable bytes: every format is written, parses, and names the
    exact file."""
    d = tmp_path / "src"
    d.mkdir()
    names = [b"it's a \"clip\".mp4", b"line\nbreak |C:x.mp4", b"=HYPERLINK(1).mp4", b"\xff\xfe bytes.mp4"]
    hits = []
    for i, n in enumerate(names):
        p = os.path.join(os.fsencode(d), n)
        os.link(sources["25"].path, p)
        hits.append(ExportHit(os.fsdecode(p), 1.0, 2.0, rank=i + 1, score=0.1, query="q |M:evil\n002 x",
                              video_id="v", clip_id=i))
    for ext in (".edl", ".xml", ".fcpxml", ".otio", ".csv"):
        export_timeline(hits, tmp_path / f"h{ext}")
    _, _, events = read_edl((tmp_path / "h.edl").read_text())
    assert len(events) == 4
    for ev in events:
        assert sum(c.startswith(" |C:") for c in ev.comments) == 1
    urls = [a.get("src") for a in ET.parse(tmp_path / "h.fcpxml").getroot().iter("asset")]
    assert [unquote_to_bytes(urlparse(u).path) for u in urls] == [os.path.join(os.fsencode(d), n) for n in names]
    files = [f for f in ET.parse(tmp_path / "h.xml").getroot().iter("file") if f.find("pathurl") is not None]
    # the file's own name (not the percent-encoded URL's), line breaks and bad bytes escaped
    assert [f.findtext("name") for f in files] == [
        'it\'s a "clip".mp4', "line\\nbreak |C:x.mp4", "=HYPERLINK(1).mp4", "\\udcff\\udcfe bytes.mp4"]
    paths = [f.findtext("pathurl") for f in files]
    assert [unquote_to_bytes(urlparse(u).path) for u in paths] == [os.path.join(os.fsencode(d), n) for n in names]
    with open(tmp_path / "h.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and rows[2]["Name"] == "'=HYPERLINK(1).mp4" and "\n" not in rows[1]["Name"]
    assert len(list(otio.adapters.read_from_file(str(tmp_path / "h.otio")).find_clips())) == 4


def test_bad_requests(sources: dict[str, Source], tmp_path: Path) -> None:
    hits = hits_for(sources["25"])
    with pytest.raises(ExportError, match="unknown export extension"):
        export_timeline(hits, tmp_path / "x.mov")
    with pytest.raises(ExportError, match="is a folder"):
        export_timeline(hits, tmp_path)
    (tmp_path / "d.edl").mkdir()
    with pytest.raises(ExportError, match="is a folder"):
        export_timeline(hits, tmp_path / "d.edl")
    with pytest.raises(ExportError, match="no such folder"):
        export_timeline(hits, tmp_path / "missing" / "x.edl")
    with pytest.raises(ExportError, match="no hits"):
        export_timeline([], tmp_path / "x.edl")
    with pytest.raises(ExportError, match="no timecode"):
        export_timeline(hits, tmp_path / "x.edl", rate=10)
    with pytest.raises(ExportError, match="drop-frame"):
        export_timeline(hits, tmp_path / "x.edl", rate=25, drop_frame=True)
    with pytest.raises(ExportError, match="empty span"):
        ExportHit(str(sources["25"].path), 2.0, 2.0)
    with pytest.raises(ExportError, match="absolute"):
        ExportHit("relative.mp4", 0.0, 1.0)
    many = [ExportHit(str(sources["25"].path), 0.0, 0.04, rank=i) for i in range(1000)]
    with pytest.raises(ExportError, match="at most 999"):
        render(plan_timeline(many), "edl")
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_missing_source_still_exported_with_warning(sources: dict[str, Source], tmp_path: Path) -> None:
    gone = tmp_path / "gone.mp4"
    hits = [ExportHit(str(gone), 1.0, 2.0, rank=1, fps=25.0), *hits_for(sources["25"])[:1]]
    rep = export_timeline(hits, tmp_path / "x.edl")
    assert any("gone.mp4" in w and "not read" in w for w in rep.warnings)
    _, _, events = read_edl((tmp_path / "x.edl").read_text())
    assert events[0].src_in == "00:00:01:00" and events[1].src_in == "10:00:01:00"


def test_probe_reads_rate_timecode_and_vfr(sources: dict[str, Source]) -> None:
    hits, warnings = with_source_info([hits_for(sources[n])[0] for n in ("29.97df", "vfr", "10")])
    assert not warnings
    assert hits[0].fps == NTSC30 and hits[0].start_timecode == "00:59:59;00" and not hits[0].variable_rate
    # 60 frames at 30 fps then 120 at 18 fps: 180 frames in 8.67 s
    assert hits[1].variable_rate and abs(float(hits[1].fps or 0) - 20.8) < 0.2
    assert hits[2].fps == 10 and hits[2].start_timecode is None and hits[2].width == 64


def test_rewrite_is_atomic_and_replaces(sources: dict[str, Source], tmp_path: Path) -> None:
    out = tmp_path / "x.otio"
    out.write_text("old")
    export_timeline(hits_for(sources["25"]), out)
    assert len(list(otio.adapters.read_from_file(str(out)).find_clips())) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.otio"]


# ---- one .mp4 per hit -------------------------------------------------------------------------------
def _gray_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="gray").astype(np.int16) for f in c.decode(c.streams.video[0])]


def test_trim_copy_on_keyframe_else_reencode(sources: dict[str, Source], tmp_path: Path) -> None:
    src = sources["25"]  # keyframe every 12 frames (0.48 s), container timecode 10:00:00:00
    keys = keyframe_times(str(src.path))
    assert keys[:3] == pytest.approx([0.0, 0.48, 0.96])
    hits = [ExportHit(str(src.path), 0.96, 1.96, rank=1, clip_id=77),
            ExportHit(str(src.path), 1.2, 2.0, rank=2, video_id="../../etc/passwd"),
            ExportHit(str(src.path), 3.0, 3.5, rank=3, clip_id=78)]
    hits, _ = with_source_info(hits)
    out = trim_hits(hits, tmp_path / "clips")
    assert [t.mode for t in out] == ["copy", "re-encode", "re-encode"]
    assert [t.path.name for t in out][0] == "hit-001-77.mp4"
    assert all(t.path.parent == tmp_path / "clips" for t in out)  # never a name from the video
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == sorted(t.path.name for t in out)
    ref = _gray_frames(src.path)

    def source_index(frame: np.ndarray) -> int:
        return int(np.argmin([np.abs(frame - r).mean() for r in ref]))

    for h, t in zip(hits, out, strict=True):
        frames = _gray_frames(t.path)
        first = source_index(frames[0])
        assert first == round(h.start_s * 25)  # the hit's first frame, exactly
        # a copy may run a couple of frames past the end (B-frame reordering); a re-encode is exact
        assert len(frames) - round((h.end_s - h.start_s) * 25) in ((0, 1, 2) if t.mode == "copy" else (0, 1))
        with av.open(str(t.path)) as c:
            assert c.streams.video[0].metadata.get("timecode") == frames_to_timecode(
                round(h.start_s * 25) + 10 * 3600 * 25, Fraction(25))
