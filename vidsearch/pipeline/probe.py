"""Probe stage: container checks and frame timestamps of one video, before any decoder opens it.

Order of checks, each a failure branch (docs/RELIABILITY.md §8.1):

1. size 0 -> ``EmptyFile`` (B1);
2. the first bytes must be a known video container (:func:`sniff_container`), else
   ``NotAVideo`` (random bytes, text, PNG, HLS/concat playlists: B5, B6, B8, S6). The demuxer is
   then forced to the sniffed format, so ffmpeg never runs a playlist demuxer that would follow
   references inside the file (rule 3), and only the ``file`` protocol is allowed. The demuxer
   goes into ``ProbeInfo.demuxer`` (decoders and scene detection reuse it, never sniff again),
   the name users know the container by into ``ProbeInfo.container`` (:func:`container_name`);
3. the container must open -> else ``CorruptContainer`` (B2: moov atom missing);
4. ``format_name`` allowlisted -> else ``NotAVideo``; streams (all, and video) within
   ``max_streams`` / ``max_video_streams`` -> else ``TooManyStreams`` (B23, S7);
5. at least one video stream, decided from the stream list -> else ``NoVideoStream`` (B9);
6. ``max_pixels`` -> ``TooLarge`` (B13, S7), checked on the header's size and again on the first
   decoded frame's; a demux pass over the video packets (no decoding) collects every frame's pts
   (VFR-exact times, B15) and counts frames -> ``TooManyFrames`` as soon as the count (or the
   container's claim) passes ``max_frames``, so a frame bomb costs bounded time and memory;
   ``CorruptContainer`` when no frame has data; the first frame is decoded (one thread) to read
   the rotation from its display matrix (B16) and to prove the codec decodes -> ``UnsupportedCodec``.
   Running out of memory anywhere here (the decode child's RLIMIT_DATA) -> ``TooLarge``.

PyAV is imported lazily: this module is also imported by discovery (for the sniffer) in the
driver, which must stay light.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from vidsearch.pipeline.types import ProbeInfo, VideoError, is_transient_io
from vidsearch.schemas.config import IngestCfg

_logger = logging.getLogger(__name__)

SNIFF_BYTES = 512
_ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")


def sniff_container(head: bytes) -> str | None:
    """ffmpeg demuxer name for the container whose first bytes are ``head``, or None.

    Only formats recognisable by their magic bytes are accepted; raw elementary streams and every
    text format (HLS, ffconcat, SDP) are refused on purpose.
    """
    if len(head) >= 12 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "mov"
    if head[:4] == b"\x1aE\xdf\xa3":
        return "matroska"
    if head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"AVIX"):
        return "avi"
    if len(head) > 376 and head[0] == 0x47 and head[188] == 0x47 and head[376] == 0x47:
        return "mpegts"
    if head[:4] == b"\x00\x00\x01\xba":
        return "mpeg"
    if head[:3] == b"FLV":
        return "flv"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:16] == _ASF_GUID:
        return "asf"
    return None


# ISO base media brands (the ftyp box: major brand, then compatible brands) -> the name users
# know the file by. ffmpeg reads all of them with one demuxer, "mov", whose name alone would list
# every .mp4 as "mov" (issue 11).
_MOV_BRANDS = (
    (("qt  ",), "mov"),
    (("3g2",), "3g2"),
    (("3gp", "3ge", "3gg", "3gr", "3gs"), "3gp"),
    (("mjp2", "mj2s"), "mj2"),
    (("M4A ", "M4B ", "M4P "), "m4a"),
    (("M4V ", "M4VH", "M4VP"), "m4v"),
    (("crx ",), "mov"),
)


def container_name(demuxer: str, head: bytes) -> str:
    """The container a file really is, for users and the ``videos.container`` column.

    ``demuxer`` is what :func:`sniff_container` chose; ``head`` the file's first bytes. The ISO
    family (``mov`` demuxer) is told apart by the ``ftyp`` brand (mp4, mov, 3gp, 3g2, m4a, m4v,
    mj2; mp4 when there is no ftyp box), Matroska by its EBML DocType (webm or matroska); other
    demuxers name their container already.
    """
    if demuxer == "mov":
        if len(head) >= 12 and head[4:8] == b"ftyp":
            brand = head[8:12].decode("latin-1")
            for prefixes, name in _MOV_BRANDS:
                if brand.startswith(prefixes):
                    return name
        elif len(head) >= 8 and head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip"):
            return "mov"  # no ftyp box: an old QuickTime file (mp4 requires ftyp first)
        return "mp4"
    if demuxer == "matroska":
        # EBML header: DocType element 0x4282, then its size as a 1-byte vint, then the text.
        i = head.find(b"\x42\x82", 4, 64)
        if i >= 0 and i + 3 <= len(head) and head[i + 2] & 0x80:
            size = head[i + 2] & 0x7F
            if head[i + 3: i + 3 + size].rstrip(b"\x00") == b"webm":
                return "webm"
        return "matroska"
    return demuxer


# Every demuxer :func:`sniff_container` can choose, and the container names of the ISO family.
SNIFFED_DEMUXERS = frozenset({"mov", "matroska", "avi", "mpegts", "mpeg", "flv", "ogg", "gif", "asf"})
_ISO_CONTAINERS = frozenset({"mp4", "mov", "3gp", "3g2", "m4a", "m4v", "mj2"})


def demuxer_of(container: str | None) -> str | None:
    """The demuxer the probe used for a video recorded as ``container`` (``videos.container``).

    That column holds :func:`container_name`'s name, or, in libraries ingested before it, the
    ffmpeg format name ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"). None: not a container the
    probe accepts (the caller sniffs the file or refuses it).
    """
    if not container:
        return None
    first = container.split(",")[0]
    name = "mov" if first in _ISO_CONTAINERS else "matroska" if first == "webm" else first
    return name if name in SNIFFED_DEMUXERS else None


def _describe_head(head: bytes) -> str:
    if head.lstrip().startswith(b"#EXTM3U"):
        return "an HLS playlist (format hls not allowed: it references other files)"
    if head.startswith(b"ffconcat") or head.lstrip().startswith(b"file "):
        return "an ffconcat list (format concat not allowed: it references other files)"
    if head.startswith(b"\x89PNG") or head[:3] == b"\xff\xd8\xff":
        return "a still image, not a video"
    try:
        head.decode("utf-8")
        return "a text file, not a video"
    except UnicodeDecodeError:
        return "not a known video container"


@contextmanager
def open_path(path_bytes: bytes) -> Iterator[str]:
    """A str path any decoder can open for ``path_bytes`` (non-UTF-8 names too, B17).

    Names that do not round-trip through UTF-8 (decord raises ``UnicodeEncodeError``) are opened
    once here and handed over as ``/proc/self/fd/N``.
    """
    try:
        path = path_bytes.decode("utf-8")
        if "\n" not in path and not path.startswith("-"):
            yield path
            return
    except UnicodeDecodeError:
        pass
    fd = os.open(path_bytes, os.O_RDONLY)
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


class ProbeResult(NamedTuple):
    """A probe's findings: the video's metadata and every frame's presentation time."""

    info: ProbeInfo
    pts_s: tuple[float, ...]      # presentation time of each frame in presentation order, from 0


def probe(path_bytes: bytes, cfg: IngestCfg) -> ProbeResult:
    """Probe one file.

    Args:
        path_bytes: the file.
        cfg: limits and the container allowlist.

    Returns:
        The metadata and the per-frame timestamps (segmentation needs them; nothing after it does).

    Raises:
        VideoError: EmptyFile, NotAVideo, CorruptContainer, NoVideoStream, TooManyStreams,
            TooLarge, TooManyFrames, UnsupportedCodec, NotFound, PermissionDenied.
    """
    import av  # lazy: PyAV bundles its own ffmpeg

    try:
        size = os.stat(path_bytes).st_size
        with open(path_bytes, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except FileNotFoundError:
        raise VideoError("NotFound", "probe", "file vanished") from None
    except PermissionError:
        raise VideoError("PermissionDenied", "probe", "permission denied") from None
    if size == 0:
        raise VideoError("EmptyFile", "probe", "file is empty (0 bytes)")
    demuxer = sniff_container(head)
    if demuxer is None:
        raise VideoError("NotAVideo", "probe", _describe_head(head))

    # The demuxer's own error messages (a damaged Matroska cluster, a cut file) are the evidence
    # that frames are missing; PyAV only routes ffmpeg's log while a level is set. They are
    # collected from the open on: opening reads the first packets (stream info), and damage
    # there is reported then, not during the demux pass (a zeroed cluster at the start of a
    # Matroska file: 24 frames gone without a timestamp gap counted). PyAV drops a message equal
    # to the one before it, which in a decode child is often the last video's: the second cut
    # Matroska file in a row said nothing ("File ended prematurely" twice), so repeats are kept.
    prev_level, prev_skip = av.logging.get_level(), av.logging.get_skip_repeated()
    av.logging.set_level(av.logging.ERROR)
    av.logging.set_skip_repeated(False)
    try:
        with open_path(path_bytes) as path, av.logging.Capture(local=False) as logs:
            # local=False: local=True misses them once a frame is decoded
            try:
                container = av.open(path, format=demuxer, options={"protocol_whitelist": "file"})
            except MemoryError:
                raise VideoError("TooLarge", "probe", "out of memory opening the container") from None
            except av.error.FFmpegError as e:
                if is_transient_io(e):
                    raise  # EIO from a network filesystem: retried by the decode worker (F18)
                raise VideoError("CorruptContainer", "probe", f"container does not open ({_short(e)})") from None
            try:
                return _probe_open(container, cfg, demuxer, container_name(demuxer, head), logs)
            finally:
                container.close()
    finally:
        av.logging.set_level(prev_level)
        av.logging.set_skip_repeated(prev_skip)


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def _check_pixels(width: int, height: int, cfg: IngestCfg) -> None:
    if width * height > cfg.max_pixels:
        raise VideoError("TooLarge", "probe", f"{width}x{height} frames exceed the {cfg.max_pixels}-pixel "
                                              "limit (--max-pixels)")


def _first_frame(packet: Any, cw: int, ch: int) -> tuple[int | None, int, int, str | None]:
    """Decode ``packet``; (rotation, width, height, error) of its first frame, rotation None if none."""
    import av

    try:
        for frame in packet.decode():
            return int(round(getattr(frame, "rotation", 0) or 0)) % 360, frame.width, frame.height, None
    except av.error.EOFError:
        pass
    except MemoryError:
        raise  # av.error.MemoryError is an FFmpegError too: not a codec problem
    except av.error.FFmpegError as e:
        return None, cw, ch, _short(e)
    return None, cw, ch, None


def _probe_open(container: Any, cfg: IngestCfg, demuxer: str, kind: str,
                logs: list[tuple[int, str, str]]) -> ProbeResult:
    """The checks after the open; ``logs``: ffmpeg's error messages so far (filled as they come)."""
    fmt = container.format.name
    if not set(fmt.split(",")) & set(cfg.allowed_formats):
        raise VideoError("NotAVideo", "probe", f"container format {fmt} not allowed")
    streams = container.streams
    n_video = len(streams.video)
    if len(streams) > cfg.max_streams or n_video > cfg.max_video_streams:
        raise VideoError("TooManyStreams", "probe",
                         f"{len(streams)} streams ({n_video} video) exceed the limit of {cfg.max_streams} "
                         f"({cfg.max_video_streams} video; --max-streams)")
    videos = [s for s in streams.video if s.codec_context is not None]
    if not videos:
        kinds = sorted({s.type for s in streams}) or ["none"]
        raise VideoError("NoVideoStream", "probe", f"no video stream (streams: {', '.join(kinds)})")
    vs = videos[0]
    codec = vs.codec_context.codec.canonical_name  # "av1", not the decoder's name "libdav1d"
    cw, ch = int(vs.codec_context.width or 0), int(vs.codec_context.height or 0)
    _check_pixels(cw, ch, cfg)
    claimed = int(vs.frames or 0)
    if claimed > cfg.max_frames:
        raise VideoError("TooManyFrames", "probe",
                         f"container claims {claimed} frames > limit {cfg.max_frames} (--max-frames)")
    # One decoder thread: only the first frame is decoded here, and frame threading would hold
    # one frame per thread in flight (at 8K, 50 MB each on every core).
    vs.thread_type = "NONE"
    pts: list[int] = []
    rotation, cw, ch, decode_error = _demux_pass(container, vs, cfg, pts, cw, ch)
    # The demuxer logs under its full name ("matroska,webm"); fmt is the forced one ("matroska").
    demux_errors = sum(1 for _, name, _ in logs if set(name.split(",")) & set(fmt.split(",")))
    if not pts:
        raise VideoError("CorruptContainer", "probe", "the video stream has no frames")
    return _finish(container, vs, fmt, (kind, demuxer), codec, claimed, pts, rotation, cw, ch, decode_error,
                   demux_errors)


def _demux_pass(container: Any, vs: Any, cfg: IngestCfg, pts: list[int], cw: int, ch: int,
                ) -> tuple[int | None, int, int, str | None]:
    """Append every video packet's pts to ``pts`` and decode the first frame; returns
    (rotation or None, width, height, decode error) of that frame."""
    import av

    rotation: int | None = None
    decode_error: str | None = None
    try:
        for packet in container.demux(vs):
            if packet.size == 0:
                # The flush packet: a frame-threaded decoder may hand back the only frame of a
                # 1-frame video only now (B11).
                if rotation is None and decode_error is None:
                    rotation, cw, ch, decode_error = _first_frame(packet, cw, ch)
                continue
            if packet.pts is not None:
                pts.append(packet.pts)
            elif packet.dts is not None:
                pts.append(packet.dts)
            else:
                pts.append(pts[-1] + 1 if pts else 0)
            if len(pts) > cfg.max_frames:
                raise VideoError("TooManyFrames", "probe",
                                 f"more than {cfg.max_frames} frames (--max-frames)")
            if rotation is None and decode_error is None:
                rotation, cw, ch, decode_error = _first_frame(packet, cw, ch)
                _check_pixels(cw, ch, cfg)  # the bitstream's size, not only the header's claim
    except MemoryError:
        raise VideoError("TooLarge", "probe", "out of memory opening the video stream") from None
    except av.error.FFmpegError as e:
        # A truncated file ends the demux early: keep the frames found; coverage catches it.
        _logger.info("demux stopped early after %d frames: %s", len(pts), _short(e))
    return rotation, cw, ch, decode_error


def _finish(container: Any, vs: Any, fmt: str, names: tuple[str, str], codec: str, claimed: int,
            pts: list[int], rotation: int | None, cw: int, ch: int, decode_error: str | None,
            demux_errors: int) -> ProbeResult:
    streams = container.streams
    tb = float(vs.time_base) if vs.time_base else 1.0 / 90000
    if rotation is None and cw * ch == 0:
        # ffmpeg refused the declared frame size (e.g. a corrupted header claiming 60000x60000,
        # past its own image-size check): the header is broken, not the codec.
        raise VideoError("CorruptContainer", "probe",
                         f"the stream's frame size is missing or invalid ({decode_error or 'no frame decodes'})")
    if rotation is None:
        # Packets exist but not one decodes: the codec is the problem, not the container.
        raise VideoError("UnsupportedCodec", "probe",
                         f"codec {codec}: no frame decodes ({decode_error or 'decoder produced nothing'})")
    pts.sort()  # packets come in decode order; frames are indexed in presentation order
    t0 = pts[0]
    times = tuple((p - t0) * tb for p in pts)
    n = len(times)
    if n > 1:
        deltas = sorted(b - a for a, b in zip(times, times[1:], strict=False))
        frame_dur = deltas[len(deltas) // 2] or (times[-1] / (n - 1))
    else:
        rate = float(vs.average_rate or vs.guessed_rate or 25)
        frame_dur = 1.0 / rate if rate > 0 else 0.04
    duration = times[-1] + frame_dur
    w, h = (ch, cw) if rotation in (90, 270) else (cw, ch)
    expected, note = _implied_frames(container, vs, fmt, times, frame_dur, duration, demux_errors)
    info = ProbeInfo(
        container=names[0], demuxer=names[1], codec=codec, width=w, height=h, coded_width=cw, coded_height=ch,
        rotation=rotation, fps=n / duration if duration > 0 else 0.0, frame_count=n,
        claimed_frames=claimed, duration_s=duration, num_streams=len(streams),
        expected_frames=expected, expected_note=note,
        pix_fmt=_pix_fmt(vs), profile=str(vs.codec_context.profile or ""),
        origin_s=float(t0 * tb), audio_streams=len(streams.audio), subtitle_streams=len(streams.subtitles),
    )
    return ProbeResult(info, times)


def _pix_fmt(vs: Any) -> str:
    """The stream's pixel format name, or "" when the header does not give one."""
    fmt = getattr(vs.codec_context, "pix_fmt", None) or getattr(getattr(vs.codec_context, "format", None), "name", None)
    return str(fmt or "")


# Containers whose duration is written in the header (not estimated by ffmpeg from timestamps
# or the bit rate): a declared duration longer than the frames reach means frames are missing.
_DECLARED_DURATION_FORMATS = frozenset({"mov", "mp4", "matroska", "webm", "avi", "asf", "flv"})


def _implied_frames(container: Any, vs: Any, fmt: str, times: tuple[float, ...], frame_dur: float,
                    duration: float, demux_errors: int) -> tuple[int, str]:
    """Frames the container implies (rule 2: compare with the container's metadata), and why.

    * Timestamp gaps, only when the demuxer reported errors (so variable-frame-rate video with
      long still stretches is not penalised): every gap of more than 1.5 frame durations counts
      the frames that would fill it.
    * Declared duration: the video stream's own (mp4 ``mdhd``), else the file's (Matroska
      ``Duration``, AVI header) when the format writes one. If the frames stop short of it by more
      than a slack, the count so far (demuxed + gaps) is scaled up by declared / reached. [M] 15
      of 40 cut or damaged Matroska mutants were "done" before: Matroska counts no frames. The
      slack is two frames + 2 % for a file the demuxer read without error (rounding, muxers'
      habits), one frame when it reported errors (the end is then damage too: a cut Matroska
      file missing 3 frames inside and 3 at the end was "done" at 97 %), plus 1 s either way
      when the duration is the file's and other streams may outlast the video.
    """
    n = len(times)
    notes = []
    gap = 0
    if demux_errors and n > 1 and frame_dur > 0:
        gap = sum(max(0, round((b - a) / frame_dur) - 1) for a, b in zip(times, times[1:], strict=False)
                  if b - a > 1.5 * frame_dur)
        if gap:
            notes.append(f"the demuxer reported {demux_errors} error(s) and ~{gap} frames are missing "
                         "in timestamp gaps")
    expected = n + gap
    declared, from_stream = None, False
    if vs.duration and vs.time_base:
        declared, from_stream = float(vs.duration * vs.time_base), True
    elif container.duration and set(fmt.split(",")) & _DECLARED_DURATION_FORMATS:
        declared = container.duration / 1e6  # AV_TIME_BASE units
    if declared is not None and duration > 0:
        others = len(container.streams) > 1 and not from_stream
        slack = (frame_dur if demux_errors else 2 * frame_dur + 0.02 * declared) + (1.0 if others else 0.0)
        if declared > duration + slack:
            expected = max(expected, math.ceil((n + gap) * declared / duration))
            notes.append(f"the container declares {declared:.2f} s, the frames reach {duration:.2f} s")
    return expected, "; ".join(notes)
