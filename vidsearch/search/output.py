"""Search results as a table, JSON, CSV or Parquet; thumbnails; player commands.

Paths come from file names, which may hold terminal escapes (``\\x1b[2J``), carriage returns or
newlines (RELIABILITY.md S8): the table escapes every control character, JSON stays valid JSON
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
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vidsearch.library import Library, LibraryError, atomic_replace
from vidsearch.search.searcher import Hit, SearchResult
from vidsearch.search.timefmt import format_hms

_logger = logging.getLogger(__name__)

RESULT_SCHEMA = pa.schema([
    ("rank", pa.int32()), ("score", pa.float64()), ("rerank_score", pa.float64()),
    ("clip_id", pa.int64()), ("video_id", pa.string()), ("path", pa.string()),
    ("start_s", pa.float64()), ("end_s", pa.float64()), ("start", pa.string()), ("end", pa.string()),
    ("merged_clip_ids", pa.list_(pa.int64())),
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


def records(result: SearchResult) -> list[dict[str, Any]]:
    """One plain dict per hit (the JSON / CSV / Parquet row)."""
    return [{"rank": h.rank, "score": round(h.score, 6), "rerank_score": h.rerank_score,
             "clip_id": h.clip_id, "video_id": h.video_id, "path": h.path, "start_s": h.start_s,
             "end_s": h.end_s, "start": format_hms(h.start_s), "end": format_hms(h.end_s),
             "merged_clip_ids": list(h.clip_ids)} for h in result.hits]


def to_json(result: SearchResult) -> str:
    """The whole result as one JSON document (hits plus how they were found)."""
    doc = {"query": result.query, "like_clip_id": result.like_clip_id, "k": result.k,
           "offset": result.offset, "strategy": result.strategy, "matched": result.matched,
           "index": result.index_kind, "timings_ms": {k: round(v, 3) for k, v in result.timings_ms.items()},
           "warnings": result.warnings, "search_id": result.search_id, "hits": records(result)}
    return json.dumps(doc, indent=2, ensure_ascii=False)


def to_csv(result: SearchResult) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([f.name for f in RESULT_SCHEMA])
    for r in records(result):
        r["merged_clip_ids"] = " ".join(map(str, r["merged_clip_ids"]))
        w.writerow([r[f.name] for f in RESULT_SCHEMA])
    return buf.getvalue()


def format_table(result: SearchResult) -> str:
    """A plain aligned table, control characters escaped."""
    rerank = any(h.rerank_score is not None for h in result.hits)
    header = ["rank", "score", *(["itm"] if rerank else []), "start-end", "clip_id", "path"]
    rows = []
    for h in result.hits:
        span = f"{format_hms(h.start_s)}-{format_hms(h.end_s)}"
        merged = f" (+{len(h.clip_ids) - 1} clips)" if len(h.clip_ids) > 1 else ""
        rows.append([str(h.rank), f"{h.score:.4f}",
                     *([f"{h.rerank_score:.3f}" if h.rerank_score is not None else ""] if rerank else []),
                     span, str(h.clip_id), escape_display(h.path) + merged])
    if not rows:
        return "no results"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == len(header) - 1 else c.rjust(w) if i < 2 else c.ljust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
             for r in [header, *rows]]
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
    table = pa.Table.from_pylist(records(result), schema=RESULT_SCHEMA)
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex}.tmp"
    try:
        pq.write_table(table, tmp)
        atomic_replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def open_command(h: Hit, video_path: str, player: str = "mpv") -> str:
    """A shell-quoted command that plays the hit from its start (``mpv`` or ``ffplay``)."""
    dur = max(h.end_s - h.start_s, 0.1)
    if player == "ffplay":
        return shlex.join(["ffplay", "-ss", f"{h.start_s:g}", "-t", f"{dur:g}", "--", video_path])
    return shlex.join(["mpv", f"--start={h.start_s:g}", f"--end={h.end_s:g}", "--", video_path])


def video_paths(con: Any, video_ids: list[str]) -> dict[str, str]:
    """Exact file paths (from ``path_bytes``) of videos, for players and ffmpeg."""
    from vidsearch.search.sandbox import run_query

    if not video_ids:
        return {}
    t = run_query(con, "SELECT video_id, path_bytes FROM videos WHERE video_id IN (SELECT unnest(?::VARCHAR[]))",
                  [list(video_ids)])
    return {v: os.fsdecode(b) for v, b in zip(t.column(0).to_pylist(), t.column(1).to_pylist(), strict=True)}


def make_thumbnails(library: Library, hits: list[Hit], paths: dict[str, str], *,
                    width: int = 320, timeout_s: float = 30.0) -> dict[int, Path | None]:
    """Extract one jpg per hit (middle of its best clip) into ``LIBRARY/thumbs/<clip_id>.jpg``.

    Returns the file of each clip id, None where extraction failed (a warning is logged).
    """
    import imageio_ffmpeg

    thumbs = library.thumbs_dir
    if thumbs.is_symlink():  # S4: a one-line user error, as the other library folders give
        raise LibraryError(f"{thumbs} is a symbolic link; library folders must be real directories")
    thumbs.mkdir(parents=True, exist_ok=True)
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    out: dict[int, Path | None] = {}
    for h in hits:
        final = thumbs / f"{int(h.clip_id)}.jpg"  # the name is an integer: no traversal possible
        if final.is_file():
            out[h.clip_id] = final
            continue
        src = paths.get(h.video_id)
        tmp = library.tmp_dir / f"thumb-{uuid.uuid4().hex}.jpg"
        library.tmp_dir.mkdir(parents=True, exist_ok=True)
        mid = (h.start_s + h.end_s) / 2
        cmd = [ffmpeg, "-nostdin", "-v", "error", "-ss", f"{mid:.3f}", "-i", f"file:{os.path.abspath(src or '')}",
               "-frames:v", "1", "-vf", f"scale={int(width)}:-2", "-y", str(tmp)]
        try:
            if src is None:
                raise FileNotFoundError("video not in the catalog")
            subprocess.run(cmd, check=True, capture_output=True, timeout=timeout_s)
            atomic_replace(tmp, final)
            out[h.clip_id] = final
        except (OSError, subprocess.SubprocessError) as e:
            _logger.warning("no thumbnail for clip %d (%s): %s", h.clip_id, escape_display(src or "?"),
                            str(e).splitlines()[0] if str(e) else type(e).__name__)
            out[h.clip_id] = None
        finally:
            tmp.unlink(missing_ok=True)
    return out
