"""Subtitle reader: sidecar files (pysubs2) and embedded text subtitle streams (PyAV) -> transcript rows.

Subtitles cost almost nothing to read and carry exactly what is said, so every video's are read
(issue 14). Output rows have ``source='subtitle'`` (:class:`~vidsearch.schemas.text_tables.TranscriptSegment`).

Sidecars: files in the video's folder named ``<stem>.<ext>`` or ``<stem>.<tags>.<ext>`` with ``ext``
in srt/vtt/ass/ssa (any case) and ``tags`` dot-separated language codes or flags (``clip.en.srt``,
``clip.pt-BR.forced.srt``); the language is the first tag that looks like a language code. A
middle part that is neither (``clip.2020.srt``) belongs to another video (``clip.2020.mp4``) and
is not read.

Untrusted input (docs/RELIABILITY.md rule: everything read from disk is a stranger's):

* only regular files are read (``O_NONBLOCK`` + ``fstat``: a FIFO named ``clip.srt`` cannot block);
* a sidecar that is a symlink is read only when its target lies in the video's folder or in the
  folder of the video's own resolved target (media managers link a video and its subtitles
  together); a link elsewhere (``clip.srt -> /etc/passwd``) is skipped with a note, so indexing
  a library can never copy an unrelated file's text into the catalog;
* at most ``max_file_bytes`` (20 MB) per file, ``max_events`` cues per track and
  ``max_event_chars`` characters per cue; more is cut with a note;
* encodings: BOM (UTF-8/16/32), then UTF-8, then cp1252 when the bytes read as Western European
  text, then charset-normalizer's best guess, then latin-1 (never fails); a non-UTF-8 decode is
  reported in a note naming the encoding.

Embedded streams: text codecs (mov_text, subrip/srt, webvtt, ass/ssa, text) are demuxed (no
decoding) and each packet's payload is read by codec; the payload formats are fixed by the
containers, whereas PyAV's subtitle-decoding API changed between releases. Bitmap codecs
(dvd_subtitle, hdmv_pgs_subtitle, dvb_subtitle, xsub) need OCR and are skipped with a note.

Nothing here raises for a bad subtitle: problems become :class:`TextNote` rows and the video's
other tracks are still read.
"""

from __future__ import annotations

import codecs
import html
import logging
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction

from vidsearch.schemas.ids import display_path
from vidsearch.schemas.text_tables import TranscriptSegment, segment_id

_logger = logging.getLogger(__name__)

SIDECAR_FORMATS: dict[str, str] = {".srt": "srt", ".vtt": "vtt", ".ass": "ass", ".ssa": "ssa"}
# Codec and decoder names (PyAV reports the decoder's: ``srt`` for subrip, ``dvdsub`` for dvd_subtitle).
TEXT_CODECS = frozenset({"mov_text", "subrip", "srt", "webvtt", "ass", "ssa", "text"})
BITMAP_CODECS = frozenset({"dvd_subtitle", "dvdsub", "hdmv_pgs_subtitle", "pgssub", "dvb_subtitle", "dvbsub", "xsub"})
# Flags that may sit between the stem and the extension beside a language code.
_SIDECAR_FLAGS = frozenset({"forced", "sdh", "cc", "hi", "default", "full", "sub", "subs", "subtitles"})
_LANG_RE = re.compile(r"^[a-z]{2,3}([-_][a-z0-9]{2,8})?$", re.IGNORECASE)

# ASS override blocks {\i1}, drawing commands inside {\p1}...{\p0}, HTML/WebVTT tags <i>, <c.x>,
# <v Name>, <00:00:01.000>.
_ASS_DRAWING_RE = re.compile(r"\{[^}]*\\p[1-9][^}]*\}.*?(\{[^}]*\\p0[^}]*\}|$)", re.DOTALL)
_ASS_OVERRIDE_RE = re.compile(r"\{[^}]*\}")
_TAG_RE = re.compile(r"</?[a-zA-Z0-9][^<>]*>|<\d{1,2}:\d{2}(:\d{2})?[.,]\d{3}>")
_SPACE_RE = re.compile(r"[ \t\u00a0]+")


@dataclass(frozen=True)
class SubtitleLimits:
    """Caps on untrusted subtitle input; past them a track is cut (with a note), never read whole."""

    # A real feature-length .srt is 50-150 kB; .ass with karaoke effects a few MB.
    max_file_bytes: int = 20 * 1024 * 1024
    # Cues per track: a 3 h film has ~2,000; karaoke-timed ASS can have tens of thousands.
    max_events: int = 100_000
    # Characters kept per cue (a cue is a line or two on screen).
    max_event_chars: int = 2_000
    # Subtitle tracks read per video (sidecars + streams): disc rips carry a few dozen.
    max_tracks: int = 64


@dataclass(frozen=True)
class TextNote:
    """Something about one track that did not fail the video: skipped, cut, re-encoded or unreadable.

    ``kind`` is ``skipped`` (not read by policy), ``cut`` (limit reached), ``encoding``
    (decoded from a legacy encoding) or ``error`` (the track could not be read).
    """

    kind: str
    track: str
    message: str


@dataclass
class SubtitleResult:
    """Segments of every text subtitle track of one video, plus notes."""

    segments: list[TranscriptSegment] = field(default_factory=list)
    notes: list[TextNote] = field(default_factory=list)

    @property
    def errors(self) -> list[TextNote]:
        return [n for n in self.notes if n.kind == "error"]


@dataclass(frozen=True)
class Sidecar:
    """A subtitle file that belongs to a video."""

    path: bytes
    fmt: str                 # pysubs2 format: srt, vtt, ass, ssa
    language: str | None     # from the name's middle part, lower-case
    track: str               # "sidecar:<file name>"


@dataclass(frozen=True)
class _Cue:
    start_s: float
    end_s: float
    text: str


# ----------------------------------------------------------------------------------------------
# Text


def clean_text(text: str, *, max_chars: int = 2_000) -> str:
    """Plain text of one cue: ASS overrides and drawings, HTML/WebVTT tags and entities removed.

    Line breaks (``\\N``, ``\\n``, newlines) become single spaces: the keyword index and snippets
    want one line.
    """
    text = _ASS_DRAWING_RE.sub(" ", text)
    text = _ASS_OVERRIDE_RE.sub("", text)
    text = text.replace("\\N", " ").replace("\\n", " ").replace("\\h", " ")
    text = _TAG_RE.sub("", text)
    text = html.unescape(text)
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = _SPACE_RE.sub(" ", text).strip()
    return text[:max_chars]


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),  # before UTF-16: FF FE 00 00
    (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)
# Characters a Western European cp1252 text uses above ASCII besides Latin-1 letters.
_CP1252_PUNCT = frozenset("’‘“”„–—…«»€°·•ŒœŠšŽžŸ ¡¿ªº©®™")


def _reads_as_cp1252(raw: bytes) -> str | None:
    """The cp1252 decode of ``raw`` if it looks like Western European text, else None.

    charset-normalizer mislabels short French or German subtitles (a cp1252 "Café déjà vu" came
    back as cp1257, with ``à`` -> ``ą``), while cp1252 is by far the most common legacy subtitle
    encoding. Accept cp1252 when every non-ASCII character is a Latin-1 letter or common
    punctuation and under half of the letters (Cyrillic or Greek decoded as cp1252 is nearly all
    accented letters; central-European cp1250 yields symbols such as ``³`` and ``¹``).
    """
    try:
        text = raw.decode("cp1252")
    except UnicodeDecodeError:
        return None
    high = [c for c in text if ord(c) > 127]
    if not high:
        return text
    for c in high:
        if not ((c.isalpha() and "\u00c0" <= c <= "\u00ff") or c in _CP1252_PUNCT):
            return None
    letters = sum(1 for c in text if c.isalpha())
    return text if letters and len(high) / letters < 0.5 else None


def decode_text(raw: bytes) -> tuple[str, str]:
    """Decode subtitle bytes of unknown encoding; returns ``(text, encoding)``. Never raises."""
    for bom, enc in _BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(enc), enc
            except UnicodeDecodeError:
                return raw.decode(enc, errors="replace"), enc + " (with errors)"
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    even, odd = raw[0:2000:2].count(0), raw[1:2000:2].count(0)
    if raw and max(even, odd) > len(raw[:2000]) // 4:  # UTF-16 without a BOM: every other byte 0
        enc = "utf-16-be" if even > odd else "utf-16-le"
        return raw.decode(enc, errors="replace"), enc
    text = _reads_as_cp1252(raw)
    if text is not None:
        return text, "cp1252"
    try:
        import charset_normalizer

        best = charset_normalizer.from_bytes(raw).best()
        if best is not None:
            return str(best), best.encoding
    except Exception as e:  # noqa: BLE001 - a detector failure must not lose the file: latin-1 below
        _logger.debug("charset detection failed: %s", e)
    return raw.decode("latin-1"), "latin-1"


# ----------------------------------------------------------------------------------------------
# Sidecars


def _sidecar_language(middle: list[str]) -> tuple[bool, str | None]:
    """Whether the middle parts of a sidecar name are only language codes/flags, and the language."""
    lang = None
    for part in middle:
        low = part.lower()
        if low in _SIDECAR_FLAGS:
            continue
        if _LANG_RE.match(part):
            lang = lang or low.replace("_", "-")
            continue
        return False, None
    return True, lang


# Subtitle-file names of recently listed folders, by every prefix that ends before a dot:
# {folder: ((st_dev, st_ino, st_mtime_ns), {prefix: [(name, is_symlink)]})}. A decode worker
# plans a folder's videos one after another; listing a folder of 10,000 files for each of them
# cost ~60 ms a video (bench/subtitle_cost.py), O(n^2) over the folder. Adding, removing or
# renaming an entry changes the folder's mtime, which drops its listing.
_LISTINGS: dict[bytes, tuple[tuple[int, int, int], dict[bytes, list[tuple[bytes, bool]]]]] = {}
_LISTINGS_KEPT = 4


def _subtitle_entries(folder: bytes) -> dict[bytes, list[tuple[bytes, bool]]]:
    """The folder's subtitle files (by extension), indexed by each name prefix ending before a dot.

    Raises:
        OSError: the folder cannot be listed.
    """
    st = os.stat(folder)
    key = (st.st_dev, st.st_ino, st.st_mtime_ns)
    hit = _LISTINGS.get(folder)
    if hit is not None and hit[0] == key:
        return hit[1]
    index: dict[bytes, list[tuple[bytes, bool]]] = {}
    with os.scandir(folder) as it:
        for entry in it:
            ename = os.fsencode(entry.name)
            if os.path.splitext(ename)[1].decode("ascii", "replace").lower() not in SIDECAR_FORMATS:
                continue
            link = entry.is_symlink()
            for i in range(1, len(ename)):
                if ename[i:i + 1] == b".":
                    index.setdefault(ename[:i], []).append((ename, link))
    _LISTINGS.pop(folder, None)
    _LISTINGS[folder] = (key, index)
    while len(_LISTINGS) > _LISTINGS_KEPT:
        _LISTINGS.pop(next(iter(_LISTINGS)))
    return index


def find_sidecars(video_path: bytes | str | os.PathLike[str]) -> tuple[list[Sidecar], list[TextNote]]:
    """Sidecar subtitle files of ``video_path`` (sorted by name), and notes on the ones skipped."""
    vp = os.fsencode(video_path)
    folder, name = os.path.split(vp)
    folder = folder or b"."
    stem = os.path.splitext(name)[0]
    if not stem:
        return [], []
    allowed = {os.path.realpath(folder), os.path.dirname(os.path.realpath(vp))}
    found: list[Sidecar] = []
    notes: list[TextNote] = []
    try:
        entries = sorted(_subtitle_entries(folder).get(stem, ()))
    except OSError as e:
        return [], [TextNote("error", "sidecar:*", f"cannot list {display_path(folder)}: {e.strerror}")]
    for ename, is_link in entries:
        if ename == name or not ename.startswith(stem + b"."):
            continue
        base, ext = os.path.splitext(ename)
        fmt = SIDECAR_FORMATS.get(ext.decode("ascii", "replace").lower())
        if fmt is None:
            continue
        middle = base[len(stem) + 1:].decode("utf-8", "replace").split(".") if base != stem else []
        ok, lang = _sidecar_language(middle)
        if not ok:
            continue
        track = "sidecar:" + display_path(ename)
        path = os.path.join(folder, ename)
        if is_link:
            target_dir = os.path.dirname(os.path.realpath(path))
            if target_dir not in allowed:
                notes.append(TextNote("skipped", track, "symlink to a file outside the video's folder; not read"))
                continue
        found.append(Sidecar(path=path, fmt=fmt, language=lang, track=track))
    return found, notes


def _read_capped(path: bytes, max_bytes: int) -> tuple[bytes, bool]:
    """Up to ``max_bytes`` of a regular file; (data, truncated). Raises OSError / ValueError."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    return data[:max_bytes], len(data) > max_bytes


_VTT_SKIP_BLOCK_RE = re.compile(r"^(NOTE|STYLE|REGION)\b")


def _strip_vtt_blocks(text: str) -> str:
    """Drop WebVTT NOTE/STYLE/REGION blocks: pysubs2 would glue them onto the previous cue's text."""
    blocks = re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n").replace("\r", "\n"))
    return "\n\n".join(b for b in blocks if not _VTT_SKIP_BLOCK_RE.match(b.lstrip()))


def _parse_sidecar_text(text: str, fmt: str) -> Iterator[_Cue]:
    import pysubs2

    if fmt == "vtt":
        text = _strip_vtt_blocks(text)
    try:
        subs = pysubs2.SSAFile.from_string(text, format_=fmt)
    except Exception:  # noqa: BLE001 - a misnamed file (an .ass that is really .srt): let pysubs2 detect
        subs = pysubs2.SSAFile.from_string(text)
    for ev in subs:
        if ev.is_comment or ev.end < ev.start:
            continue
        yield _Cue(ev.start / 1000.0, ev.end / 1000.0, ev.text)


def read_sidecar(sidecar: Sidecar, video_id: str, *, limits: SubtitleLimits = SubtitleLimits(),
                 offset_s: float = 0.0) -> tuple[list[TranscriptSegment], list[TextNote]]:
    """Segments of one sidecar file; problems are notes, never exceptions.

    Args:
        sidecar: from :func:`find_sidecars`.
        video_id: the video's id (rows and segment ids carry it).
        limits: caps on untrusted input.
        offset_s: subtracted from cue times (the video's first frame time relative to the
            container start, usually 0), to put cues on the clips' timeline.
    """
    notes: list[TextNote] = []
    try:
        raw, truncated = _read_capped(sidecar.path, limits.max_file_bytes)
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return [], [TextNote("error", sidecar.track, f"cannot read {display_path(sidecar.path)}: {why}")]
    if truncated:
        notes.append(TextNote("cut", sidecar.track, f"file larger than {limits.max_file_bytes} bytes; "
                              "only the first part was read"))
    text, enc = decode_text(raw)
    if enc not in ("utf-8", "utf-8-sig"):
        notes.append(TextNote("encoding", sidecar.track, f"decoded as {enc}"))
    try:
        cues = list(_limit(_parse_sidecar_text(text, sidecar.fmt), limits, sidecar.track, notes))
    except Exception as e:  # noqa: BLE001 - any parser failure on a stranger's file is a note
        return [], [*notes, TextNote("error", sidecar.track,
                                     f"{display_path(sidecar.path)} is not a readable {sidecar.fmt} file "
                                     f"({type(e).__name__}: {str(e)[:200]})")]
    return _segments(cues, video_id, sidecar.track, sidecar.language, limits, offset_s), notes


def _limit(cues: Iterable[_Cue], limits: SubtitleLimits, track: str, notes: list[TextNote]) -> Iterator[_Cue]:
    for i, cue in enumerate(cues):
        if i >= limits.max_events:
            notes.append(TextNote("cut", track, f"more than {limits.max_events} cues; the rest were not read"))
            return
        yield cue


def _segments(cues: Iterable[_Cue], video_id: str, track: str, language: str | None,
              limits: SubtitleLimits, offset_s: float) -> list[TranscriptSegment]:
    out: list[TranscriptSegment] = []
    for cue in sorted(cues, key=lambda c: (c.start_s, c.end_s)):
        text = clean_text(cue.text, max_chars=limits.max_event_chars)
        start, end = cue.start_s - offset_s, cue.end_s - offset_s
        if not text or end < 0:
            continue
        start, end = max(0.0, start), max(0.0, end)
        i = len(out)
        out.append(TranscriptSegment(
            video_id=video_id, segment_id=segment_id(video_id, "subtitle", track, i, start, end, None),
            segment_index=i, start_s=start, end_s=max(start, end), text=text, source="subtitle",
            track=track, language=language,
        ))
    return out


# ----------------------------------------------------------------------------------------------
# Embedded streams


def payload_text(codec: str, payload: bytes) -> str:
    """The cue text inside one subtitle packet of a text codec (tags not yet stripped).

    mov_text (3GPP timed text): a 16-bit big-endian length, then UTF-8 (or BOM'd UTF-16) text,
    then style boxes. ASS/SSA in Matroska: ``ReadOrder,Layer,Style,Name,MarginL,MarginR,MarginV,
    Effect,Text``. subrip/webvtt/text: the cue text itself.
    """
    if codec == "mov_text":
        if len(payload) < 2:
            return ""
        n = int.from_bytes(payload[:2], "big")
        body = payload[2:2 + n]
        if body.startswith((codecs.BOM_UTF16_BE, codecs.BOM_UTF16_LE)):
            return body.decode("utf-16", errors="replace")
        return body.decode("utf-8", errors="replace")
    text = decode_text(payload)[0]
    if codec in ("ass", "ssa"):
        parts = text.split(",", 8)
        return parts[8] if len(parts) == 9 else text
    return text


def _time_base(stream: object) -> Fraction:
    tb = getattr(stream, "time_base", None)
    return Fraction(tb) if tb else Fraction(1, 1000)


def read_embedded(container: object, video_id: str, *, limits: SubtitleLimits = SubtitleLimits(), origin_s: float = 0.0,
                  max_tracks: int | None = None) -> tuple[list[TranscriptSegment], list[TextNote]]:
    """Segments of every text subtitle stream of an open PyAV container.

    Args:
        container: ``av.open(...)`` result (opened by the caller with the probe's safety options).
        video_id: the video's id.
        limits: caps on untrusted input.
        origin_s: absolute time (s) of the clips' zero, the first video frame; packet times
            minus this are clip-timeline times.
        max_tracks: streams read at most (default ``limits.max_tracks``).
    """
    import av

    notes: list[TextNote] = []
    streams = [s for s in container.streams if s.type == "subtitle"]  # type: ignore[attr-defined]
    text_streams = []
    for s in streams:
        codec = (s.codec_context.name if s.codec_context is not None else None) or "unknown"
        track = f"stream:{s.index}:{codec}"
        if codec in TEXT_CODECS:
            text_streams.append((s, codec, track))
        elif codec in BITMAP_CODECS:
            notes.append(TextNote("skipped", track, f"bitmap subtitles ({codec}) need OCR; not read"))
        else:
            notes.append(TextNote("skipped", track, f"subtitle codec {codec} not supported; not read"))
    cap = limits.max_tracks if max_tracks is None else max_tracks
    if len(text_streams) > cap:
        for _, _, track in text_streams[cap:]:
            notes.append(TextNote("cut", track, f"more than {cap} subtitle tracks; not read"))
        text_streams = text_streams[:cap]
    if not text_streams:
        return [], notes
    cues: dict[int, list[_Cue]] = {s.index: [] for s, _, _ in text_streams}
    info = {s.index: (codec, track, _time_base(s)) for s, codec, track in text_streams}
    full: set[int] = set()
    try:
        for packet in container.demux(*[s for s, _, _ in text_streams]):  # type: ignore[attr-defined]
            idx = packet.stream.index
            if packet.pts is None or packet.size == 0 or idx in full:
                continue
            codec, track, tb = info[idx]
            text = payload_text(codec, bytes(packet))
            if not text.strip():
                continue  # mov_text writes an empty sample to clear the screen between cues
            if len(cues[idx]) >= limits.max_events:
                full.add(idx)
                notes.append(TextNote("cut", track, f"more than {limits.max_events} cues; the rest were not read"))
                continue
            start = float(packet.pts * tb)
            dur = float(packet.duration * tb) if packet.duration else 0.0
            cues[idx].append(_Cue(start, start + max(dur, 0.0), text))
    except av.error.FFmpegError as e:
        # A truncated file ends the demux early: keep the cues read so far, say so.
        notes.append(TextNote("error", "stream:*", f"demux stopped early ({type(e).__name__}: {str(e)[:200]})"))
    segments: list[TranscriptSegment] = []
    for s, _codec, track in text_streams:
        lang = (s.metadata or {}).get("language")
        lang = None if not lang or lang.lower() in ("und", "unk", "zxx", "mis") else lang.lower()
        segments.extend(_segments(cues[s.index], video_id, track, lang, limits, origin_s))
    return segments, notes


def video_origin_s(container: object) -> tuple[float, float]:
    """(absolute time of the first video frame, container start time) in seconds, 0 when unknown.

    Clip times count from the first video frame (the probe's origin); sidecar cues count from
    the container's start, as players show them.
    """
    cstart = getattr(container, "start_time", None)
    container_s = float(cstart) / 1_000_000 if cstart not in (None, 0) else 0.0  # AV_TIME_BASE units
    for s in container.streams:  # type: ignore[attr-defined]
        if s.type == "video" and s.start_time is not None and s.time_base:
            return float(s.start_time * s.time_base), container_s
    return container_s, container_s


def read_subtitles(path_bytes: bytes, video_id: str, *, limits: SubtitleLimits = SubtitleLimits(),
                   origin_s: float | None = None, embedded: bool = True) -> SubtitleResult:
    """Every text subtitle of one video: sidecar files and embedded streams.

    Args:
        path_bytes: the video file.
        video_id: its id.
        limits: caps on untrusted input.
        origin_s: the clips' time zero in absolute container time (the probe's first video
            frame time); read from the file when None.
        embedded: also read the container's subtitle streams.

    Returns:
        Segments sorted by (track, start) and notes. A video that cannot be opened still gets
        its sidecars (at offset 0) and an ``error`` note.
    """
    from vidsearch.pipeline.audio import open_media

    result = SubtitleResult()
    container_start = 0.0
    if embedded or origin_s is None:
        try:
            with open_media(path_bytes) as container:
                first, container_start = video_origin_s(container)
                if origin_s is None:
                    origin_s = first
                if embedded:
                    segs, notes = read_embedded(container, video_id, limits=limits, origin_s=origin_s)
                    result.segments.extend(segs)
                    result.notes.extend(notes)
        except Exception as e:  # noqa: BLE001 - the probe owns container errors; here they only cost the streams
            result.notes.append(TextNote("error", "stream:*", f"container not read ({type(e).__name__}: "
                                                              f"{str(e)[:200]})"))
    origin = origin_s if origin_s is not None else 0.0
    sidecars, notes = find_sidecars(path_bytes)
    result.notes.extend(notes)
    room = max(0, limits.max_tracks - len({s.track for s in result.segments}))
    for sc in sidecars[:room]:
        segs, notes = read_sidecar(sc, video_id, limits=limits, offset_s=origin - container_start)
        result.segments.extend(segs)
        result.notes.extend(notes)
    for sc in sidecars[room:]:
        result.notes.append(TextNote("cut", sc.track, f"more than {limits.max_tracks} subtitle tracks; not read"))
    for n in result.notes:
        if n.kind == "error":
            _logger.warning("%s: %s: %s", display_path(path_bytes), n.track, n.message)
    return result

