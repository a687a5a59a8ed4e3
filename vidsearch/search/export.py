"""Export search hits to editing software: EDL, FCPXML, FCP7 XML, OpenTimelineIO, Resolve CSV.

The hits become one timeline: one video track, the hits back to back in rank order, each event
the hit's span of its source video, with its rank, score and query attached (comments in an EDL,
markers elsewhere). The timeline model is OpenTimelineIO's (https://opentimeline.io); what each
format gets from it:

=========  ==========================================================================================
``.otio``  OTIO's native JSON, as OTIO writes it.
``.edl``   CMX 3600 by the ``otio-cmx3600-adapter`` package, corrected: OTIO writes no ``FCM`` line
           (added: ``DROP FRAME`` / ``NON-DROP FRAME``) and counts every timecode at the first
           track's rate (the list is given one rate: the timeline's). Each event is followed by a
           DaVinci Resolve marker line (`` |C:ResolveColorBlue |M:name |D:frames``), so the same
           file also loads as markers (Resolve: Timelines > Import > Timeline Markers from EDL).
``.xml``   FCP7 xmeml (Premiere Pro, Resolve) by ``otio-fcp-adapter``, corrected: sequence duration,
           rate and start timecode (OTIO takes them from the first clip: wrong with mixed rates),
           each clip's record in/out (exact frames), drop-frame source timecodes (``DF``), and the
           hits as sequence markers (OTIO writes clip markers at absolute source frames where
           FCP7 reads media-relative ones).
``.fcpxml`` FCPXML 1.9 (Final Cut Pro X, Resolve), serialised here from the same plan: the
           ``otio-fcpx-xml-adapter`` writes ``frameDuration=""`` at 23.976/29.97, places each
           clip's video outside the clip's range (an empty clip in FCP), cannot read its own output
           back, runs ``ffprobe`` on every source and builds XPath queries from file names (a
           name with a quote crashes it).
``.csv``   the layout of DaVinci Resolve's Edit Index export (below), one row per hit.
=========  ==========================================================================================

Rates (see :mod:`vidsearch.search.timecode`): a source is counted at its own frame rate when
that is a standard or whole-number rate, else (variable frame rate, odd rates) at the nearest
standard rate of its average. The timeline gets a standard rate (the commonest source rate, or
the standard rate it divides: the 10 fps demo world is placed on a 30 fps timeline). Drop-frame
timecode at 29.97/59.94 unless asked otherwise or the sources' own timecode is non-drop. A
source whose container carries a start timecode (``timecode`` tag: ``ffmpeg -timecode``, camera
files) keeps it: its events start at that label plus the hit's offset.

Every format but the EDL keeps each source's own rate; an EDL has one rate, so a source at
another rate has its source timecode expressed at the list's rate (same instant, within a frame).

The CSV columns are those of Resolve's Edit Index export (Edit page > Edit Index, options menu
> Export), as reproduced by community tooling that reads Resolve marker exports
(github.com/son1cn/Resolve-Marker-to-YT-Chapters, ``resolve-to-YT-chapters.ps1``). Resolve
itself loads markers from an EDL, not from a CSV; the CSV is the spreadsheet/script view of the
same timeline.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from vidsearch.search.timecode import (
    STANDARD_RATES,
    TimecodeError,
    as_rate,
    conform_rate,
    format_rate,
    frames_to_timecode,
    is_drop_frame_rate,
    nominal_fps,
    parse_timecode,
    timeline_rate,
)

_logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "RESOLVE_CSV_COLUMNS",
    "Event",
    "ExportError",
    "ExportHit",
    "ExportReport",
    "SourceInfo",
    "TimelinePlan",
    "build_otio_timeline",
    "clean_text",
    "export_timeline",
    "format_for",
    "plan_timeline",
    "probe_source",
    "render",
    "with_source_info",
]

Format = Literal["edl", "fcpxml", "xml", "otio", "csv"]
FORMATS: dict[str, Format] = {".edl": "edl", ".fcpxml": "fcpxml", ".xml": "xml", ".otio": "otio", ".csv": "csv"}

# DaVinci Resolve Edit Index export columns (module docstring says where this layout comes from).
RESOLVE_CSV_COLUMNS = (
    "#", "Reel", "Match", "V", "C", "Dur", "Source In", "Source Out", "Record Duration", "Record In",
    "Record Out", "Name", "Comments", "Source Start", "Source End", "Source Duration", "Codec",
    "Source FPS", "Resolution", "Color", "Notes", "EDL Clip Name", "Marker", "Keywords",
)
EDL_MAX_EVENTS = 999  # CMX 3600 event numbers have three digits
_MARKER_COLOR = "Blue"


class ExportError(ValueError):
    """An export the user asked for cannot be written (format, destination, hits)."""


@dataclass(frozen=True)
class ExportHit:
    """One search hit to export: a span of a source video, with what found it.

    The search layer maps its results onto this; fields about the source (rate, timecode, size)
    may be left out and are read from the file by :func:`with_source_info`.
    """

    path: str                                # the source video's exact path (absolute)
    start_s: float                           # span inside the video, from its first frame
    end_s: float
    rank: int = 0
    score: float | None = None
    video_id: str | None = None
    clip_id: int | None = None
    query: str | None = None
    fps: float | Fraction | None = None      # the source's (average) frame rate
    variable_rate: bool = False              # the source's frame durations vary (VFR)
    start_timecode: str | None = None        # the container's start timecode label, if any
    duration_s: float | None = None          # the source's length
    width: int | None = None
    height: int | None = None
    codec: str | None = None
    audio_channels: int | None = None        # None: unknown; 0: no audio stream
    audio_rate: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start_s) and math.isfinite(self.end_s)) or self.start_s < 0:
            raise ExportError(f"hit {self.rank}: bad span {self.start_s!r}-{self.end_s!r}")
        if self.end_s <= self.start_s:
            raise ExportError(f"hit {self.rank}: empty span {self.start_s:g}-{self.end_s:g} s")
        if not os.path.isabs(self.path):
            raise ExportError(f"hit {self.rank}: the source path must be absolute: {clean_text(self.path)}")


@dataclass(frozen=True)
class SourceInfo:
    """What an export needs to know about a source file (from its container header)."""

    fps: Fraction | None
    variable_rate: bool
    start_timecode: str | None
    duration_s: float | None
    width: int | None
    height: int | None
    codec: str | None
    audio_channels: int = 0                 # of the first audio stream; 0: none
    audio_rate: int | None = None


@dataclass(frozen=True)
class Event:
    """One hit placed on the timeline. Frame numbers are absolute (timecode included)."""

    hit: ExportHit
    name: str                    # the file's name: what editing software matches media on
    rate: Fraction               # the rate the source's frames are counted at
    drop_frame: bool             # the source's timecode is drop-frame
    tc_start: int                # label of the source's first frame, as frames at ``rate``
    src_in: int                  # at ``rate``; ``src_out`` exclusive
    src_out: int
    media_frames: int            # the source's length in frames (at least up to ``src_out``)
    rec_in: int                  # on the timeline, at the timeline rate; exclusive out
    rec_out: int
    edl_src_in: int              # the source span at the timeline rate (an EDL has one rate)
    edl_src_out: int

    @property
    def label(self) -> str:
        """``#rank score`` (the marker's name)."""
        s = f"#{self.hit.rank}"
        return s if self.hit.score is None else f"{s} {self.hit.score:.3f}"


@dataclass(frozen=True)
class TimelinePlan:
    """The timeline every format is written from."""

    title: str
    rate: Fraction
    drop_frame: bool
    events: tuple[Event, ...]
    width: int
    height: int
    warnings: tuple[str, ...] = ()

    @property
    def duration(self) -> int:
        """Timeline length in frames."""
        return self.events[-1].rec_out if self.events else 0


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_timeline` wrote."""

    path: Path
    format: Format
    events: int
    rate: Fraction
    drop_frame: bool
    warnings: list[str] = field(default_factory=list)


# ---- source information ---------------------------------------------------------------------------
def probe_source(path: str) -> SourceInfo:
    """Frame rate, start timecode, length and size of a video, from its container header.

    The file must start like a known video container (the ingest's allowlist); the demuxer is
    forced to that format and only the ``file`` protocol is allowed, so a playlist put in a
    video's place is never followed.

    Raises:
        OSError: unreadable file. ExportError: not a video container.
    """
    import av

    from vidsearch.pipeline.probe import SNIFF_BYTES, open_path, sniff_container

    raw = os.fsencode(path)
    with open(raw, "rb") as f:
        head = f.read(SNIFF_BYTES)
    demuxer = sniff_container(head)
    if demuxer is None:
        raise ExportError(f"{clean_text(path)}: not a known video container")
    with open_path(raw) as p:
        try:
            container = av.open(p, format=demuxer, options={"protocol_whitelist": "file"})
        except av.error.FFmpegError as e:
            raise ExportError(f"{clean_text(path)}: container does not open ({e})") from None
    try:
        if not container.streams.video:
            raise ExportError(f"{clean_text(path)}: no video stream")
        vs = container.streams.video[0]
        avg = vs.average_rate or vs.guessed_rate
        base = vs.base_rate
        fps = Fraction(avg) if avg else None
        # r_frame_rate (base) is the rate every timestamp fits; a differing average means the
        # frame durations vary (VFR: phones, screen recordings, setpts edits).
        variable = bool(fps and base and abs(float(Fraction(base)) / float(fps) - 1) > 2e-3)
        tc = None
        for md in [container.metadata, vs.metadata, *(s.metadata for s in container.streams if s is not vs)]:
            if md.get("timecode"):
                tc = str(md["timecode"])
                break
        duration = None
        if vs.duration is not None and vs.time_base is not None:
            duration = float(vs.duration * vs.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        ctx = vs.codec_context
        audio = container.streams.audio[0] if container.streams.audio else None
        return SourceInfo(fps=fps, variable_rate=variable, start_timecode=tc, duration_s=duration,
                          width=ctx.width or None, height=ctx.height or None, codec=ctx.name or None,
                          audio_channels=(audio.codec_context.channels or 1) if audio is not None else 0,
                          audio_rate=(audio.codec_context.sample_rate or None) if audio is not None else None)
    finally:
        container.close()


def with_source_info(hits: Sequence[ExportHit],
                     probe: Callable[[str], SourceInfo] = probe_source) -> tuple[list[ExportHit], list[str]]:
    """Fill each hit's source fields from its file (probed once per file).

    The file's own values win over the hit's (an exact 30000/1001 over a catalog's 29.97003, and
    the timecode only the file has). A file that cannot be read keeps the hit's values, with a
    warning: the export still places it, without a start timecode.
    """
    cache: dict[str, SourceInfo | None] = {}
    warnings: list[str] = []
    out = []
    for h in hits:
        if h.path not in cache:
            try:
                cache[h.path] = probe(h.path)
            except (OSError, ExportError) as e:
                msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                warnings.append(f"{clean_text(h.path)}: not read ({msg}); exported without its start timecode")
                cache[h.path] = None
        info = cache[h.path]
        if info is None:
            out.append(h)
            continue
        out.append(replace(
            h, fps=info.fps or h.fps, variable_rate=info.variable_rate or h.variable_rate,
            start_timecode=info.start_timecode or h.start_timecode,
            duration_s=info.duration_s if info.duration_s is not None else h.duration_s,
            width=info.width or h.width, height=info.height or h.height, codec=info.codec or h.codec,
            audio_channels=info.audio_channels, audio_rate=info.audio_rate))
    return out, warnings


# ---- the plan -------------------------------------------------------------------------------------
def plan_timeline(hits: Sequence[ExportHit], *, title: str | None = None,
                  rate: float | Fraction | str | None = None, drop_frame: bool | None = None) -> TimelinePlan:
    """Place ``hits`` (in the given order) back to back on one timeline.

    Each event's source span is the hit's span rounded to the nearest frames of its source
    (at least one frame), so it is within half a frame of the hit's seconds.

    Args:
        hits: the hits, source fields filled (:func:`with_source_info`) where known.
        title: the timeline's name (default: the first hit's query).
        rate: the timeline rate (a standard rate; default: chosen from the sources).
        drop_frame: drop-frame timecode at 29.97/59.94 (default: the sources' own, else yes).

    Raises:
        ExportError: no hits, or a rate that has no timecode.
    """
    if not hits:
        raise ExportError("nothing to export: no hits")
    warnings: list[str] = []
    rates: list[Fraction] = []
    for h in hits:
        r, note = conform_rate(h.fps, variable=h.variable_rate)
        rates.append(r)
        if note and f"{clean_text(h.path)}: {note}" not in warnings:
            warnings.append(f"{clean_text(h.path)}: {note}")
    if rate is None:
        t_rate = timeline_rate(rates)
    else:
        try:
            t_rate = as_rate(rate)
        except TimecodeError as e:
            raise ExportError(str(e)) from None
        if t_rate not in STANDARD_RATES:
            raise ExportError(f"timeline rate {format_rate(t_rate)} has no timecode; use one of "
                              + ", ".join(format_rate(s) for s in STANDARD_RATES))

    starts: list[tuple[int, bool]] = []
    for h, r in zip(hits, rates, strict=True):
        tc0, df = 0, is_drop_frame_rate(r)
        if h.start_timecode:
            try:
                tc0, df = parse_timecode(h.start_timecode, r)
            except TimecodeError as e:
                warnings.append(f"{clean_text(h.path)}: start timecode ignored ({e})")
        starts.append((tc0, df))
    if drop_frame is None:
        same = [df for h, r, (_, df) in zip(hits, rates, starts, strict=True) if r == t_rate and h.start_timecode]
        drop_frame = same[0] if same else is_drop_frame_rate(t_rate)
    elif drop_frame and not is_drop_frame_rate(t_rate):
        raise ExportError(f"{format_rate(t_rate)} fps has no drop-frame timecode (only 29.97 and 59.94)")
    drop_frame = bool(drop_frame and is_drop_frame_rate(t_rate))

    events = []
    rec = 0
    for h, r, (tc0, df) in zip(hits, rates, starts, strict=True):
        a = round(h.start_s * r)
        b = max(a + 1, round(h.end_s * r))
        media = max(b, round(h.duration_s * r)) if h.duration_s else b
        if r == t_rate:
            rec_len, e_in = b - a, tc0 + a
        else:
            rec_len = max(1, round((b - a) / r * t_rate))
            e_in = round((tc0 + a) / r * t_rate)
        events.append(Event(hit=h, name=clean_text(os.path.basename(h.path)) or "video", rate=r, drop_frame=df,
                            tc_start=tc0, src_in=tc0 + a, src_out=tc0 + b, media_frames=media,
                            rec_in=rec, rec_out=rec + rec_len, edl_src_in=e_in, edl_src_out=e_in + rec_len))
        rec += rec_len
    first = hits[0]
    t = title if title is not None else (first.query or "vidsearch hits")
    return TimelinePlan(title=clean_text(t), rate=t_rate, drop_frame=drop_frame, events=tuple(events),
                        width=first.width or 1920, height=first.height or 1080, warnings=tuple(warnings))


# ---- OpenTimelineIO model -------------------------------------------------------------------------
def _file_url(path: str, host: str = "") -> str:
    # Percent-encode the exact bytes: spaces, quotes and non-UTF-8 names all survive.
    return f"file://{host}" + quote(os.fsencode(os.path.abspath(path)), safe="/")


def _hit_metadata(e: Event) -> dict[str, Any]:
    h = e.hit
    return {"rank": h.rank, "score": h.score, "query": h.query, "video_id": h.video_id,
            "clip_id": None if h.clip_id is None else str(h.clip_id),  # 64-bit: a string in JSON
            "path": clean_text(h.path), "start_s": h.start_s, "end_s": h.end_s,
            "source_rate": format_rate(e.rate), "source_timecode": _tc(e.tc_start, e.rate, e.drop_frame),
            "drop_frame": e.drop_frame}


def _at_timeline_rate(e: Event, plan: TimelinePlan) -> Event:
    """``e`` with its source counted at the timeline rate (same instants, within a frame)."""
    tc0 = round(Fraction(e.tc_start) / e.rate * plan.rate)
    return replace(e, rate=plan.rate, drop_frame=plan.drop_frame, tc_start=tc0, src_in=e.edl_src_in,
                   src_out=e.edl_src_out,
                   media_frames=max(e.edl_src_out - tc0, round(Fraction(e.media_frames) / e.rate * plan.rate)))


def build_otio_timeline(plan: TimelinePlan, *, url: Callable[[str], str] = _file_url,
                        smpte_only: bool = False) -> Any:
    """The plan as an ``opentimelineio.schema.Timeline``: clips at their sources' own rates.

    Each clip's source range starts at the source's start timecode plus the hit's offset; its
    media reference is the source file (a ``file://`` URL) covering the whole file; a marker over
    the clip carries ``#rank score`` and the query; ``metadata["vidsearch"]`` the hit itself.
    ``smpte_only`` counts sources at rates without SMPTE timecode (10, 12, 15 fps) at the
    timeline rate instead, for writers that need a timecode for every file.
    """
    import opentimelineio as otio  # type: ignore[import-untyped]

    rt, tr = otio.opentime.RationalTime, otio.opentime.TimeRange
    timeline = otio.schema.Timeline(name=plan.title)
    timeline.global_start_time = rt(0, float(plan.rate))
    timeline.metadata["vidsearch"] = {"rate": format_rate(plan.rate), "drop_frame": plan.drop_frame}
    track = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video)
    timeline.tracks.append(track)
    for e in plan.events:
        if smpte_only and e.rate not in STANDARD_RATES:
            e = _at_timeline_rate(e, plan)
        r = float(e.rate)
        # name: the file's own name (OTIO's writers otherwise take it from the percent-encoded URL)
        ref = otio.schema.ExternalReference(target_url=url(e.hit.path),
                                            available_range=tr(rt(e.tc_start, r), rt(e.media_frames, r)))
        ref.name = e.name
        clip = otio.schema.Clip(name=e.name, media_reference=ref,
                                source_range=tr(rt(e.src_in, r), rt(e.src_out - e.src_in, r)))
        clip.metadata["vidsearch"] = _hit_metadata(e)
        clip.markers.append(otio.schema.Marker(
            name=e.label, marked_range=tr(rt(e.src_in, r), rt(e.src_out - e.src_in, r)),
            color=otio.schema.MarkerColor.BLUE, comment=clean_text(e.hit.query or "")))
        track.append(clip)
    return timeline


# ---- writers --------------------------------------------------------------------------------------
def render(plan: TimelinePlan, fmt: Format) -> bytes:
    """The file content of ``plan`` in format ``fmt``, checked by reading it back."""
    if fmt == "edl":
        if len(plan.events) > EDL_MAX_EVENTS:
            raise ExportError(f"an EDL holds at most {EDL_MAX_EVENTS} events; export {len(plan.events)} hits "
                              "as .xml, .fcpxml or .otio")
        return _render_edl(plan).encode("utf-8")
    if fmt == "xml":
        return _render_xmeml(plan)
    if fmt == "fcpxml":
        return _render_fcpxml(plan)
    if fmt == "otio":
        import opentimelineio as otio  # type: ignore[import-untyped]

        text = otio.adapters.write_to_string(build_otio_timeline(plan), "otio_json")
        return str(text).encode("utf-8")
    if fmt == "csv":
        return _render_csv(plan).encode("utf-8")
    raise ExportError(f"unknown export format {fmt!r}")


def _tc(frames: int, rate: Fraction, drop_frame: bool) -> str:
    return frames_to_timecode(frames, rate, drop_frame)


_EVENT_LINE = re.compile(
    r"^(?P<num>\d{3})  AX       V     C        (?P<tc>(?:\d\d:\d\d:\d\d[:;]\d\d ?){4})$")


def _render_edl(plan: TimelinePlan) -> str:
    """CMX 3600 through OTIO's writer, then corrected (module docstring)."""
    import opentimelineio as otio  # type: ignore[import-untyped]

    rt, tr = otio.opentime.RationalTime, otio.opentime.TimeRange
    r = float(plan.rate)
    timeline = otio.schema.Timeline(name=plan.title)
    track = otio.schema.Track(kind=otio.schema.TrackKind.Video)
    timeline.tracks.append(track)
    for e in plan.events:
        # The EDL's single rate: every timecode of the list is counted at the timeline rate.
        clip = otio.schema.Clip(
            name=e.name, media_reference=otio.schema.ExternalReference(target_url=clean_text(e.hit.path)),
            source_range=tr(rt(e.edl_src_in, r), rt(e.edl_src_out - e.edl_src_in, r)))
        comments = [f"VIDSEARCH RANK {e.hit.rank}" + ("" if e.hit.score is None else f" SCORE {e.hit.score:.4f}")]
        if e.hit.query:
            comments.append(f"VIDSEARCH QUERY: {clean_text(e.hit.query)}")
        if e.hit.video_id:
            comments.append(f"VIDSEARCH VIDEO ID: {clean_text(e.hit.video_id)}")
        if e.rate != plan.rate:
            comments.append(f"VIDSEARCH SOURCE FPS: {format_rate(e.rate)}")
        # Reel "AX" (auxiliary source) is how file-based media is listed (Premiere, Resolve): the
        # editor matches the file by the FROM CLIP NAME comment; a reel made from the file name
        # (OTIO's default) can hold spaces and collide after truncation to 8 characters.
        clip.metadata["cmx_3600"] = {"reel": "AX", "comments": comments}
        track.append(clip)
    text = str(otio.adapters.write_to_string(timeline, "cmx_3600", rate=r))

    lines = text.splitlines()
    if not lines or not lines[0].startswith("TITLE:"):
        raise RuntimeError("otio cmx_3600 writer: no TITLE line")  # adapter changed: fail loudly
    fcm = "FCM: DROP FRAME" if plan.drop_frame else "FCM: NON-DROP FRAME"
    out = [lines[0], fcm]
    events = iter(plan.events)
    current: Event | None = None
    for line in lines[1:]:
        m = _EVENT_LINE.match(line)
        if m:
            if current is not None:
                out.append(_resolve_marker_line(current))
            current = next(events)
            # OTIO counts timecode as drop-frame at 29.97 whatever the list says: rewrite the
            # four timecodes in the list's mode from the planned frames (checked to agree).
            want = [current.edl_src_in, current.edl_src_out, current.rec_in, current.rec_out]
            got = [parse_timecode(t, plan.rate)[0] for t in m["tc"].split()]
            if got != want:
                raise RuntimeError(f"otio cmx_3600 writer placed event {m['num']} at {got}, planned {want}")
            tcs = " ".join(_tc(f, plan.rate, plan.drop_frame) for f in want)
            line = line[:m.start("tc")] + tcs
        out.append(line)
    if current is not None:
        out.append(_resolve_marker_line(current))
    if next(events, None) is not None:
        raise RuntimeError("otio cmx_3600 writer dropped events")
    return "\n".join(out) + "\n"


def _resolve_marker_line(e: Event) -> str:
    # Resolve's marker EDL comment: "<note> |C:<colour> |M:<name> |D:<frames>". The note is left
    # empty (Resolve writes " |C:..." then) so that the line can never start with a digit, which
    # EDL readers would take for an event; '|' would end a field.
    name = e.label + (f" {clean_text(e.hit.query)}" if e.hit.query else "")
    return f" |C:ResolveColor{_MARKER_COLOR} |M:{name.replace('|', '/')} |D:{e.rec_out - e.rec_in}"


def _render_xmeml(plan: TimelinePlan) -> bytes:
    """FCP7 xmeml through OTIO's writer, then corrected (module docstring)."""
    import opentimelineio as otio  # type: ignore[import-untyped]

    # xmeml needs a timecode for every file: sources at 10/12/15 fps are described at the
    # timeline rate (same instants; exact when their rate divides it, as the timeline rate does).
    events = [e if e.rate in STANDARD_RATES else _at_timeline_rate(e, plan) for e in plan.events]
    timeline = build_otio_timeline(plan, url=lambda p: _file_url(p, host="localhost"), smpte_only=True)
    timeline.global_start_time = None  # the sequence timecode is written below, in the right mode
    for clip in timeline.find_clips():
        clip.markers.clear()  # written as sequence markers below
    root = ET.fromstring(str(otio.adapters.write_to_string(timeline, "fcp_xml")))
    seq = root.find("./project/children/sequence")
    if seq is None:
        seq = root.find(".//sequence")
    if seq is None:
        raise RuntimeError("otio fcp_xml writer: no sequence")
    _set_child_text(seq, "duration", str(plan.duration))
    old_rate = seq.find("rate")
    new_rate = _xmeml_rate(plan.rate)
    if old_rate is not None:
        seq.insert(list(seq).index(old_rate), new_rate)
        seq.remove(old_rate)
    else:
        seq.append(new_rate)
    for tc in seq.findall("timecode"):
        seq.remove(tc)
    tc = ET.SubElement(seq, "timecode")
    tc.append(_xmeml_rate(plan.rate))
    ET.SubElement(tc, "string").text = _tc(0, plan.rate, plan.drop_frame)
    ET.SubElement(tc, "frame").text = "0"
    ET.SubElement(tc, "displayformat").text = "DF" if plan.drop_frame else "NDF"
    fmt = seq.find("./media/video/format")
    if fmt is not None and not len(fmt):
        sc = ET.SubElement(fmt, "samplecharacteristics")
        sc.append(_xmeml_rate(plan.rate))
        ET.SubElement(sc, "width").text = str(plan.width)
        ET.SubElement(sc, "height").text = str(plan.height)
    items = seq.findall("./media/video/track/clipitem")
    if len(items) != len(events):
        raise RuntimeError(f"otio fcp_xml writer wrote {len(items)} clips for {len(events)} hits")
    for item, e in zip(items, events, strict=True):
        rates = item.findall("rate")
        for dup in rates[1:]:  # OTIO writes the clip's <rate> twice
            item.remove(dup)
        got = (int(_child_text(item, "in")), int(_child_text(item, "out")))
        if got != (e.src_in - e.tc_start, e.src_out - e.tc_start):
            raise RuntimeError(f"otio fcp_xml writer: clip {e.hit.rank} in/out {got}")
        file_tc = item.find("./file/timecode")
        if file_tc is not None:  # the file's first use holds its definition
            # OTIO writes every file timecode as non-drop: a DF source shows its own labels.
            if int(_child_text(file_tc, "frame")) != e.tc_start:
                raise RuntimeError(f"otio fcp_xml writer: file timecode of clip {e.hit.rank}")
            _set_child_text(file_tc, "string", _tc(e.tc_start, e.rate, e.drop_frame))
            _set_child_text(file_tc, "displayformat", "DF" if e.drop_frame else "NDF")
        _set_child_text(item, "start", str(e.rec_in))
        _set_child_text(item, "end", str(e.rec_out))
        _set_child_text(item, "duration", str(e.src_out - e.src_in))
    for e in plan.events:
        mk = ET.SubElement(seq, "marker")
        ET.SubElement(mk, "name").text = e.label
        ET.SubElement(mk, "comment").text = clean_text(e.hit.query or "")
        ET.SubElement(mk, "in").text = str(e.rec_in)
        ET.SubElement(mk, "out").text = str(e.rec_out)
    ET.indent(root, space="    ")
    body = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE xmeml>\n' + body + "\n").encode("utf-8")


def _xmeml_rate(rate: Fraction) -> ET.Element:
    e = ET.Element("rate")
    ET.SubElement(e, "timebase").text = str(nominal_fps(rate))
    ET.SubElement(e, "ntsc").text = "FALSE" if rate.denominator == 1 else "TRUE"
    return e


def _child_text(parent: ET.Element, tag: str) -> str:
    c = parent.find(tag)
    if c is None or c.text is None:
        raise RuntimeError(f"<{parent.tag}> has no <{tag}>")
    return c.text


def _set_child_text(parent: ET.Element, tag: str, text: str) -> None:
    c = parent.find(tag)
    if c is None:
        c = ET.SubElement(parent, tag)
    c.text = text


def _seconds(value: Fraction) -> str:
    """FCPXML time: a rational number of seconds, ``0s``, ``3601s`` or ``1001/30000s``."""
    if value == 0:
        return "0s"
    return f"{value.numerator}s" if value.denominator == 1 else f"{value.numerator}/{value.denominator}s"


def _render_fcpxml(plan: TimelinePlan) -> bytes:
    """FCPXML 1.9: one event holding one project whose spine is the hits as asset-clips.

    Times in the sequence (offset, duration) are whole timeline frames; times of an asset
    (start, the clip's start, markers) are whole frames of that asset, which FCP requires.
    """
    root = ET.Element("fcpxml", version="1.9")
    res = ET.SubElement(root, "resources")
    ids = iter(f"r{i}" for i in range(1, 1_000_000))
    formats: dict[tuple[Fraction, int, int], str] = {}

    def format_id(rate: Fraction, width: int, height: int) -> str:
        key = (rate, width, height)
        if key not in formats:
            formats[key] = next(ids)
            ET.SubElement(res, "format", id=formats[key], frameDuration=_seconds(1 / rate),
                          width=str(width), height=str(height))
        return formats[key]

    seq_format = format_id(plan.rate, plan.width, plan.height)
    assets: dict[tuple[str, Fraction, int], str] = {}
    for e in plan.events:
        key = (e.hit.path, e.rate, e.tc_start)
        if key in assets:
            continue
        assets[key] = aid = next(ids)
        f_id = format_id(e.rate, e.hit.width or plan.width, e.hit.height or plan.height)
        asset = ET.SubElement(res, "asset", id=aid, name=e.name, src=_file_url(e.hit.path),
                              start=_seconds(Fraction(e.tc_start) / e.rate),
                              duration=_seconds(Fraction(e.media_frames) / e.rate), hasVideo="1", format=f_id)
        if e.hit.audio_channels:  # without these FCP imports the picture only
            asset.set("hasAudio", "1")
            asset.set("audioSources", "1")
            asset.set("audioChannels", str(e.hit.audio_channels))
            if e.hit.audio_rate:
                asset.set("audioRate", str(e.hit.audio_rate))
    library = ET.SubElement(root, "library")
    event_el = ET.SubElement(library, "event", name="vidsearch")
    project = ET.SubElement(event_el, "project", name=plan.title)
    seq = ET.SubElement(project, "sequence", format=seq_format, duration=_seconds(Fraction(plan.duration) / plan.rate),
                        tcStart="0s", tcFormat="DF" if plan.drop_frame else "NDF")
    spine = ET.SubElement(seq, "spine")
    for e in plan.events:
        aid = assets[(e.hit.path, e.rate, e.tc_start)]
        clip = ET.SubElement(spine, "asset-clip", ref=aid, name=e.name,
                             offset=_seconds(Fraction(e.rec_in) / plan.rate),
                             start=_seconds(Fraction(e.src_in) / e.rate),
                             duration=_seconds(Fraction(e.rec_out - e.rec_in) / plan.rate),
                             tcFormat="DF" if e.drop_frame else "NDF")
        ET.SubElement(clip, "marker", start=_seconds(Fraction(e.src_in) / e.rate), duration=_seconds(1 / e.rate),
                      value=e.label, note=clean_text(e.hit.query or ""))
    ET.indent(root, space="    ")
    body = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE fcpxml>\n' + body + "\n").encode("utf-8")


def _render_csv(plan: TimelinePlan) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(RESOLVE_CSV_COLUMNS)
    for i, e in enumerate(plan.events, 1):
        h = e.hit
        res = f"{h.width}x{h.height}" if h.width and h.height else ""
        notes = "; ".join(x for x in (
            e.label, f"query: {clean_text(h.query)}" if h.query else "",
            f"video_id: {clean_text(h.video_id)}" if h.video_id else "",
            f"clip_id: {h.clip_id}" if h.clip_id is not None else "") if x)
        row = {
            "#": i, "Reel": "", "Match": "", "V": "V1", "C": "C", "Dur": _tc(e.rec_out - e.rec_in, plan.rate, False),
            "Source In": _tc(e.src_in, e.rate, e.drop_frame), "Source Out": _tc(e.src_out, e.rate, e.drop_frame),
            "Record Duration": _tc(e.rec_out - e.rec_in, plan.rate, False),
            "Record In": _tc(e.rec_in, plan.rate, plan.drop_frame),
            "Record Out": _tc(e.rec_out, plan.rate, plan.drop_frame),
            "Name": _spreadsheet_safe(e.name), "Comments": _spreadsheet_safe(clean_text(h.query or "")),
            "Source Start": _tc(e.tc_start, e.rate, e.drop_frame),
            "Source End": _tc(e.tc_start + e.media_frames, e.rate, e.drop_frame),
            "Source Duration": _tc(e.media_frames, e.rate, False), "Codec": _spreadsheet_safe(h.codec or ""),
            "Source FPS": format_rate(e.rate), "Resolution": res, "Color": "", "Notes": _spreadsheet_safe(notes),
            "EDL Clip Name": _spreadsheet_safe(e.name), "Marker": _MARKER_COLOR, "Keywords": "",
        }
        w.writerow([row[c] for c in RESOLVE_CSV_COLUMNS])
    return buf.getvalue()


def _spreadsheet_safe(text: str) -> str:
    # A cell starting with = + - @ is a formula in a spreadsheet (CSV injection): a file named
    # "=HYPERLINK(...).mp4" must stay text.
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


# ---- text hygiene ---------------------------------------------------------------------------------
def clean_text(value: object) -> str:
    """One printable line: control characters, surrogates (undecodable file-name bytes) and line
    breaks escaped, so nothing read from the library can break a line-based format or XML."""
    out = []
    for ch in str(value):
        if ch.isprintable():
            out.append(ch)
        elif ch in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        else:
            o = ord(ch)
            out.append(f"\\x{o:02x}" if o < 0x100 else (f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"))
    return "".join(out)


# ---- entry point ----------------------------------------------------------------------------------
def format_for(path: str | os.PathLike[str], fmt: str | None = None) -> Format:
    """The export format named by ``fmt`` or by the file's extension.

    Raises:
        ExportError: unknown extension or format name.
    """
    if fmt:
        name = fmt.lower().lstrip(".")
        for f in FORMATS.values():
            if f == name:
                return f
        raise ExportError(f"unknown export format {fmt!r}; use one of: {', '.join(FORMATS.values())}")
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise ExportError(f"{clean_text(os.fspath(path))}: unknown export extension {ext or '(none)'!r}; "
                          f"use one of {', '.join(FORMATS)} (or a folder for .mp4 clips)")
    return FORMATS[ext]


def export_timeline(hits: Sequence[ExportHit], out: str | os.PathLike[str], *, fmt: str | None = None,
                    title: str | None = None, rate: float | Fraction | str | None = None,
                    drop_frame: bool | None = None, probe: bool = True) -> ExportReport:
    """Write ``hits`` as a timeline file for editing software, atomically.

    Args:
        hits: the hits in timeline order (usually rank order).
        out: the file to write; its extension names the format unless ``fmt`` is given.
        fmt: ``edl``, ``fcpxml``, ``xml``, ``otio`` or ``csv``.
        title: the timeline's name (default: the query).
        rate: timeline rate (default: chosen from the sources).
        drop_frame: drop-frame timecode at 29.97/59.94 (default: as the sources, else yes).
        probe: read each source's rate, start timecode and size from the file.

    Raises:
        ExportError: unknown format, no hits, a destination that is a folder or whose folder is
            missing, a bad rate.
    """
    from vidsearch.library import atomic_write_bytes

    target = Path(out).expanduser().absolute()
    if target.is_dir():
        raise ExportError(f"{clean_text(str(target))} is a folder; give a file name ending in "
                          + ", ".join(FORMATS))
    f = format_for(out, fmt)
    if not target.parent.is_dir():
        raise ExportError(f"{clean_text(str(target.parent))}: no such folder")
    warnings: list[str] = []
    if probe:
        hits, warnings = with_source_info(hits)
    plan = plan_timeline(hits, title=title, rate=rate, drop_frame=drop_frame)
    warnings += plan.warnings
    if f == "edl":
        other = sorted({format_rate(e.rate) for e in plan.events if e.rate != plan.rate})
        if other:
            warnings.append(f"sources at {', '.join(other)} fps on a {format_rate(plan.rate)} fps EDL: their source "
                            "timecode is counted at the EDL's rate (.fcpxml, .xml and .otio keep each source's rate)")
    data = render(plan, f)
    atomic_write_bytes(target, data)
    return ExportReport(path=target, format=f, events=len(plan.events), rate=plan.rate, drop_frame=plan.drop_frame,
                        warnings=warnings)

