"""Search results as a table, JSON, CSV or Parquet; thumbnails; player commands.

Paths come from file names, which may hold terminal escapes (``\\x1b[2J``), carriage returns or
newlines (docs/RELIABILITY.md S8): the table escapes every control character, JSON stays valid JSON
(its own escaping), CSV quotes fields. Written files are temp file + fsync + rename; thumbnail
names come from clip ids only (S4).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shlex
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vidsearch.schemas.times import round_ms
from vidsearch.search.timefmt import format_hms, format_span
from vidsearch.search.types import MODALITIES, Hit, SearchResult, TextSnippet

if TYPE_CHECKING:
    import pyarrow as pa

    from vidsearch.library import Library

_logger = logging.getLogger(__name__)

# The CSV / Parquet columns. pyarrow and the library package are imported where they are used:
# printing a result (e.g. one a running server answered) needs neither.
RESULT_COLUMNS = ("rank", "score", "rerank_score", "clip_id", "video_id", "path", "start_s", "end_s",
                  "start", "end", "merged_clip_ids", "modalities", "visual_score", "speech_score",
                  "screen_score", "play_s", "snippet")


def result_schema() -> pa.Schema:
    """Arrow schema of :func:`write_parquet`: clip ids int64 (exact in Parquet and SQL; JSON
    writes them as strings); one score column per modality (null where it did not match)."""
    import pyarrow as pa

    return pa.schema([
        ("rank", pa.int32()), ("score", pa.float64()), ("rerank_score", pa.float64()),
        ("clip_id", pa.int64()), ("video_id", pa.string()), ("path", pa.string()),
        ("start_s", pa.float64()), ("end_s", pa.float64()), ("start", pa.string()), ("end", pa.string()),
        ("merged_clip_ids", pa.list_(pa.int64())), ("modalities", pa.list_(pa.string())),
        ("visual_score", pa.float64()), ("speech_score", pa.float64()), ("screen_score", pa.float64()),
        ("play_s", pa.float64()), ("snippet", pa.string()),
    ])


def escape_display(text: str) -> str:
    """Text safe to print on a terminal: control and other non-printable characters escaped."""
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ch in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        else:
            o = ord(ch)
            out.append(f"\\x{o:02x}" if o < 0x100 else (f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"))
    return "".join(out)


def _scores(h: Hit) -> dict[str, float]:
    """Each modality's own score (a hit saved before modalities existed: its score is visual)."""
    return dict(h.scores) if h.scores else {h.modalities[0] if h.modalities else "visual": h.score}


def records(result: SearchResult) -> list[dict[str, Any]]:
    """One plain dict per hit (the CSV / Parquet row): ids as int64, times rounded to ms."""
    out = []
    for h in result.hits:
        sc = _scores(h)
        out.append({"rank": h.rank, "score": round(h.score, 6), "rerank_score": h.rerank_score,
                    "clip_id": h.clip_id, "video_id": h.video_id, "path": h.path, "start_s": round_ms(h.start_s),
                    "end_s": round_ms(h.end_s), "start": format_hms(h.start_s), "end": format_hms(h.end_s),
                    "merged_clip_ids": list(h.clip_ids), "modalities": list(h.modalities),
                    **{f"{m}_score": None if m not in sc else round(sc[m], 6) for m in MODALITIES},
                    "play_s": round_ms(h.play_at), "snippet": None if h.snippet is None else h.snippet.text})
    return out


def snippet_json(s: TextSnippet | None) -> dict[str, Any] | None:
    """A snippet as JSON: its text, the marked words as ``[start, end)`` offsets into ``text``
    (Unicode code points, as Python counts; JavaScript: index ``Array.from(text)``) and the
    source of the row (``speech``, ``subtitle``, ``screen``)."""
    if s is None:
        return None
    return {"text": s.text, "marks": [[a, b] for a, b in s.marks], "source": s.source}


def hit_json(h: Hit) -> dict[str, Any]:
    """One hit as JSON, the same fields in ``search --json`` and the web API.

    Clip ids are decimal strings: a JavaScript number (and jq) holds 53 bits, and a rounded id
    then names another clip or none. ``scores`` holds each matching modality's own score (a
    cosine, a BM25): they are never compared with each other; ``score`` is what ranked the hit
    (the result's ``score_kind``). ``play_s`` is where playback starts (a speech hit: its first
    matched word).
    """
    return {"rank": h.rank, "score": round(h.score, 6),
            "rerank_score": None if h.rerank_score is None else round(h.rerank_score, 6),
            "clip_id": str(h.clip_id), "video_id": h.video_id, "path": h.path,
            "start_s": round_ms(h.start_s), "end_s": round_ms(h.end_s),
            "start": format_hms(h.start_s), "end": format_hms(h.end_s),
            "merged_clip_ids": [str(c) for c in h.clip_ids],
            "modalities": list(h.modalities), "scores": {m: round(v, 6) for m, v in _scores(h).items()},
            "snippet": snippet_json(h.snippet), "play_s": round_ms(h.play_at)}


def hit_from_json(d: dict[str, Any]) -> Hit:
    """A :func:`hit_json` object back as a :class:`Hit` (a running server's answer).

    Raises:
        KeyError, TypeError, ValueError: not such an object.
    """
    snip = d.get("snippet")
    snippet = None
    if snip is not None:
        text = str(snip["text"])
        marks = tuple((int(a), int(b)) for a, b in snip.get("marks") or ())
        if any(not 0 <= a <= b <= len(text) for a, b in marks):
            raise ValueError("snippet marks outside its text")
        snippet = TextSnippet(text, marks, str(snip.get("source") or "speech"))
    mods = tuple(str(m) for m in d.get("modalities") or ("visual",))
    start = float(d["start_s"])
    play = d.get("play_s")
    return Hit(rank=int(d["rank"]), score=float(d["score"]), clip_id=int(d["clip_id"]), video_id=str(d["video_id"]),
               path=str(d["path"]), start_s=start, end_s=float(d["end_s"]),
               clip_ids=tuple(int(c) for c in d["merged_clip_ids"]),
               rerank_score=None if d.get("rerank_score") is None else float(d["rerank_score"]),
               modalities=mods, scores={str(m): float(v) for m, v in (d.get("scores") or {}).items()},
               snippet=snippet, play_s=None if play is None or float(play) == start else float(play))


def result_json(result: SearchResult) -> dict[str, Any]:
    """The whole result as a JSON object (hits plus how they were found): ``search --json``,
    and the web API's ``/api/search`` adds its page fields (``has_more``, URLs) to it."""
    return {"query": result.query,
            "like_clip_id": None if result.like_clip_id is None else str(result.like_clip_id),
            "k": result.k, "offset": result.offset, "strategy": result.strategy, "matched": result.matched,
            "generation": result.generation, "index": result.index_kind, "model": result.model_name,
            "modalities": list(result.modalities), "score_kind": result.score_kind,
            "min_score": result.min_score,
            "best_score": None if result.best_score is None else round(result.best_score, 6),
            "no_good_match": result.no_good_match,
            "timings_ms": {k: round(v, 3) for k, v in result.timings_ms.items()},
            "warnings": list(result.warnings), "search_id": result.search_id, "server": result.server,
            "hits": [hit_json(h) for h in result.hits]}


def to_json(result: SearchResult) -> str:
    """:func:`result_json` as text (UTF-8 kept, strict JSON)."""
    return json.dumps(result_json(result), indent=2, ensure_ascii=False, allow_nan=False)


def to_csv(result: SearchResult) -> str:
    """CSV with a header row; ``\\n`` line ends (not the csv module's CRLF)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(RESULT_COLUMNS)
    for r in records(result):
        r["merged_clip_ids"] = " ".join(map(str, r["merged_clip_ids"]))
        r["modalities"] = "+".join(r["modalities"])
        w.writerow([r[c] for c in RESULT_COLUMNS])
    return buf.getvalue()


def timing_line(result: SearchResult) -> str:
    """One line: how many results, from where, and where the time went (model load apart)."""
    t = result.timings_ms
    parts = [f"{k} {t[k]:.0f}" if t[k] >= 10 else f"{k} {t[k]:.1f}"
             for k in ("load", "encode", "filter", "ann", "db", "rerank", "keyword_open", "keyword", "fuse") if k in t]
    where = f"vidsearch serve at {result.server}" if result.server else result.strategy
    n = len(result.hits)
    return f"{n} result{'' if n == 1 else 's'} in {t.get('total', 0):.0f} ms ({', '.join(parts)}) via {where}"


def _modality_cell(h: Hit) -> str:
    return "+".join(h.modalities)


def _detail_line(h: Hit) -> str:
    """The second line of a hit of a text search: each modality's own score, the marked snippet."""
    sc = _scores(h)
    parts = [", ".join(f"{m} {sc[m]:.4f}" if m == "visual" else f"{m} {sc[m]:.3g}" for m in h.modalities if m in sc)]
    if h.snippet is not None:
        said = {"speech": "said", "subtitle": "subtitle", "screen": "on screen"}.get(h.snippet.source, h.snippet.source)
        at = f" at {format_hms(h.play_s)}" if h.play_s is not None else ""
        parts.append(f"{said}{at}: {escape_display(h.snippet.render())}")
    return " · ".join(parts)


def format_table(result: SearchResult) -> str:
    """A plain aligned table, control characters escaped; "no good match" or "no results" when empty.

    A search of what is said or shown on screen adds the column ``in`` (the modalities that
    found each moment) and, under each hit, the modalities' own scores and the snippet with the
    matched words in «».
    """
    rerank = any(h.rerank_score is not None for h in result.hits)
    multi = tuple(result.modalities) != ("visual",)
    header = ["rank", "score", *(["itm"] if rerank else []), *(["in"] if multi else []), "start-end", "clip_id",
              "path"]
    rows = []
    for h in result.hits:
        n_more = len(h.clip_ids) - 1
        merged = f" (+{n_more} clip{'' if n_more == 1 else 's'})" if n_more else ""
        rows.append([str(h.rank), f"{h.score:.4f}",
                     *([f"{h.rerank_score:.3f}" if h.rerank_score is not None else ""] if rerank else []),
                     *([_modality_cell(h)] if multi else []),
                     format_span(h.start_s, h.end_s), str(h.clip_id), escape_display(h.path) + merged])
    if not rows:
        if result.no_good_match:
            return (f"no good match (the best score, {result.best_score:.4f}, is below the minimum score "
                    f"{result.min_score:g}; lower it with --min-score)")
        return "no results"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    indent = " " * (widths[0] + 2)
    lines = []
    for n, r in enumerate([header, *rows]):
        lines.append("  ".join(c.ljust(w) if i == len(header) - 1 else c.rjust(w) if i < 2 else c.ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip())
        if multi and n > 0:
            lines.append(indent + _detail_line(result.hits[n - 1]))
    return "\n".join(lines)


def write_parquet(result: SearchResult, path: str | os.PathLike[str]) -> Path:
    """Write the hits to ``path`` atomically; refuses a directory.

    Raises:
        ValueError: ``path`` is a directory or its folder does not exist.
    """
    final = Path(path).expanduser().absolute()
    if final.is_dir():
        raise ValueError(f"{final} is a directory; give a file name for --parquet")
    if not final.parent.is_dir():
        raise ValueError(f"{final.parent} does not exist")
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vidsearch.library import atomic_replace

    table = pa.Table.from_pylist(records(result), schema=result_schema())
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex}.tmp"
    try:
        pq.write_table(table, tmp)
        atomic_replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


PLAYERS = ("mpv", "ffplay")


def find_player(preferred: str | None = None) -> str | None:
    """The video player to use: ``preferred`` if it is installed, else the first of
    :data:`PLAYERS` on ``PATH`` (``preferred=None``); None when there is none."""
    for name in (preferred,) if preferred else PLAYERS:
        if shutil.which(name):
            return name
    return None


def open_command(h: Hit, video_path: str, player: str = "mpv") -> str:
    """A shell-quoted command that plays the hit from its start (a speech hit: its first matched
    word) to its end (``mpv`` or ``ffplay``)."""
    start = h.play_at
    dur = round_ms(max(h.end_s - start, 0.1))
    if player == "ffplay":
        return shlex.join(["ffplay", "-ss", format_hms(start), "-t", f"{dur:g}", "--", video_path])
    return shlex.join(["mpv", f"--start={format_hms(start)}", f"--end={format_hms(h.end_s)}", "--", video_path])


def video_paths(con: Any, video_ids: list[str]) -> dict[str, str]:
    """Exact file paths (from ``path_bytes``) of videos, for players and ffmpeg."""
    from vidsearch.search.sandbox import run_query

    if not video_ids:
        return {}
    t = run_query(con, "SELECT video_id, path_bytes FROM videos WHERE video_id IN (SELECT unnest(?::VARCHAR[]))",
                  [list(video_ids)])
    return {v: os.fsdecode(b) for v, b in zip(t.column(0).to_pylist(), t.column(1).to_pylist(), strict=True)}


@dataclass(frozen=True)
class FrameRef:
    """A frame that exists: the video file and the time of one of the clip's decoded frames."""

    path: str
    at_s: float      # that frame's timestamp
    fps: float = 0.0  # the video's frame rate (0: unknown)
    demuxer: str | None = None  # the ingest's probed demuxer (None: sniffed from the file now)


def thumbnail_frames(con: Any, clip_ids: list[int]) -> dict[int, FrameRef]:
    """The frame each clip's thumbnail shows: the middle one of its sampled frames.

    Sampled frame times are frames that were decoded at ingest. The middle of the clip's span
    is not always one: a padded tail clip (one frame repeated) spans past the last frame, and
    ffmpeg, asked to seek there, writes nothing.
    """
    from vidsearch.search.sandbox import run_query

    if not clip_ids:
        return {}
    from vidsearch.pipeline.probe import demuxer_of

    t = run_query(con, "SELECT clips.clip_id, videos.path_bytes, clips.frame_times_s, clips.start_s, clips.end_s, "
                  "videos.fps, videos.duration_s, videos.container FROM clips JOIN videos USING (video_id) "
                  "WHERE clips.clip_id IN (SELECT unnest(?::BIGINT[]))", [[int(c) for c in clip_ids]])
    out: dict[int, FrameRef] = {}
    for r in t.to_pylist():
        fps = float(r["fps"] or 0.0)
        times = [x for x in (r["frame_times_s"] or []) if x is not None]
        if times:
            at = float(sorted(times)[len(times) // 2])
        else:  # no sampled times recorded: the middle of the clip, but never past the last frame
            at = (r["start_s"] + r["end_s"]) / 2
            if r["duration_s"]:
                at = min(at, max(0.0, r["duration_s"] - (1 / fps if fps > 0 else 0.1)))
        out[int(r["clip_id"])] = FrameRef(os.fsdecode(r["path_bytes"]), at, fps, demuxer_of(r["container"]))
    return out


def make_thumbnails(library: Library, frames: dict[int, FrameRef], *,
                    width: int = 320, timeout_s: float = 30.0) -> dict[int, Path | None]:
    """Extract one jpg per clip id (the frame :func:`thumbnail_frames` chose) into
    ``LIBRARY/thumbs/<clip_id>.jpg``; existing ones are reused.

    Written as a temp file in ``thumbs/`` itself and renamed: a read command writes nothing in
    the library beyond ``thumbs/`` and ``history.duckdb``. The video is untrusted input (it may
    have been replaced since the ingest): ffmpeg gets the probed demuxer (else the one its first
    bytes show; none: no thumbnail) and the file protocol only, so a playlist named .mp4 is never
    followed (docs/RELIABILITY.md rule 3, S6).

    Returns:
        The file of each clip id, None where extraction failed (one warning line each).

    Raises:
        LibraryError: ``thumbs/`` is a symbolic link, or cannot be created or written
            (a read-only library).
    """
    import imageio_ffmpeg

    from vidsearch.library import LibraryError, atomic_replace

    thumbs = library.thumbs_dir
    if thumbs.is_symlink():  # S4: a one-line user error, as the other library folders give
        raise LibraryError(f"{thumbs} is a symbolic link; library folders must be real directories")
    try:
        thumbs.mkdir(exist_ok=True)
    except OSError as e:
        raise LibraryError(f"cannot create {thumbs}: {e.strerror or e}") from None
    if not os.access(thumbs, os.W_OK):
        raise LibraryError(f"cannot write thumbnails: {thumbs} is read-only")
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    out: dict[int, Path | None] = {}
    for clip_id, ref in frames.items():
        final = thumbs / f"{int(clip_id)}.jpg"  # the name is an integer: no traversal possible
        if final.is_file() and not final.is_symlink():
            out[clip_id] = final
            continue
        tmp = thumbs / f".{int(clip_id)}-{uuid.uuid4().hex}.tmp.jpg"
        # Half a frame before the frame: the first frame at or after that time is this one, even
        # when the stored time rounds a little above the frame's own timestamp.
        seek = max(0.0, ref.at_s - (0.5 / ref.fps if ref.fps > 0 else 0.001))
        try:
            demuxer = ref.demuxer or _sniffed_demuxer(ref.path)
            cmd = [ffmpeg, "-nostdin", "-v", "error", "-protocol_whitelist", "file", "-f", demuxer,
                   "-ss", f"{seek:.3f}", "-i", f"file:{os.path.abspath(ref.path)}",
                   "-frames:v", "1", "-vf", f"scale={int(width)}:-2", "-y", str(tmp)]
            r = subprocess.run(cmd, capture_output=True, timeout=timeout_s)
            if r.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
                raise _ThumbFailed(_ffmpeg_reason(r.stderr, r.returncode))
            atomic_replace(tmp, final)
            out[clip_id] = final
        except subprocess.TimeoutExpired:
            _logger.warning("no thumbnail for clip %d (%s): ffmpeg took over %g s", clip_id,
                            escape_display(ref.path), timeout_s)
            out[clip_id] = None
        except (OSError, _ThumbFailed) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            _logger.warning("no thumbnail for clip %d (%s at %s): %s", clip_id, escape_display(ref.path),
                            format_hms(ref.at_s), escape_display(why))
            out[clip_id] = None
        finally:
            tmp.unlink(missing_ok=True)
    return out


class _ThumbFailed(Exception):
    """ffmpeg wrote no thumbnail."""


def _sniffed_demuxer(path: str) -> str:
    """The demuxer for a video the catalog names no container for, from its first bytes."""
    from vidsearch.pipeline.probe import SNIFF_BYTES, sniff_container

    with open(os.fsencode(path), "rb") as f:
        demuxer = sniff_container(f.read(SNIFF_BYTES))
    if demuxer is None:
        raise _ThumbFailed("not a known video container")
    return demuxer


def _ffmpeg_reason(stderr: bytes, returncode: int) -> str:
    """One line of why ffmpeg failed: its last message, not the whole command line."""
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    return (lines[-1] if lines else f"ffmpeg exited with status {returncode}")[:300]
