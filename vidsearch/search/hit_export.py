"""Search hits to editing software: the library side of ``search --export`` and ``vidsearch export``.

:mod:`vidsearch.search.export` (timelines) and :mod:`vidsearch.search.trim` (one ``.mp4`` per
hit) work on :class:`~vidsearch.search.export.ExportHit`; this module makes those from a search
result and the library's catalog, and checks where the user asked the files to go.

- **Exact paths.** A hit carries the video's *display* path (undecodable bytes escaped); the file
  is opened by ``videos.path_bytes``, the exact bytes ingest saw, read with a bound parameter.
- **Where files go.** Exports are written where the user says, never into the folders and files
  the library manages (``shards/``, ``index/``, ``thumbs/``, ``quarantine/``, ``.tmp/``, ``logs/``,
  ``manifest.json``, the DuckDB files, ``.lock``, a local shard location), so that a read
  command cannot change the library through an export (README: "read commands do not write").
  Links are resolved before that check. Timelines are written atomically (temp file + rename in
  the target's folder); clips each to a temp name in the folder, then renamed.
- **Ranking.** Hits are exported in the order the search ranked them (rank 1 first on the
  timeline); a saved search's hits come back in their saved ranks.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vidsearch.library import Library, LibraryError
from vidsearch.schemas.tables import STATUS_REPLACED
from vidsearch.search.export import FORMATS, ExportError, ExportHit, Format, clean_text, export_timeline, format_for
from vidsearch.search.types import Hit

_logger = logging.getLogger(__name__)

__all__ = [
    "MANAGED_DIRS",
    "MANAGED_FILES",
    "ExportOutcome",
    "ExportTarget",
    "SourceRow",
    "export_target",
    "source_rows",
    "to_export_hits",
    "write_export",
]

# Folders and files of a library folder that vidsearch manages (docs/ARCHITECTURE.md, "The library folder").
MANAGED_DIRS = ("shards", "index", "thumbs", "quarantine", ".tmp", "logs")
MANAGED_FILES = ("manifest.json", "catalog.duckdb", "catalog.duckdb.wal", "history.duckdb",
                 "history.duckdb.wal", ".lock", "vidsearch-library.json")
CLIPS_FORMAT = "mp4"  # --format mp4: a folder of one .mp4 per hit


@dataclass(frozen=True)
class ExportTarget:
    """Where an export goes, checked: a timeline file, or a folder of clips."""

    path: Path                      # absolute
    kind: Literal["timeline", "clips"]
    fmt: Format | None = None       # the timeline format (None for clips)

    def describe(self) -> str:
        return "one .mp4 per hit" if self.kind == "clips" else _FORMAT_NAMES[self.fmt or "otio"]


_FORMAT_NAMES: dict[str, str] = {
    "edl": "CMX 3600 EDL", "fcpxml": "FCPXML 1.9 (Final Cut Pro X, DaVinci Resolve)",
    "xml": "FCP7 XML (Premiere Pro, DaVinci Resolve)", "otio": "OpenTimelineIO", "csv": "Resolve edit-index CSV",
}


@dataclass(frozen=True)
class SourceRow:
    """What the catalog knows of a hit's video."""

    path: str                       # exact path (os.fsdecode of path_bytes)
    status: str
    fps: float | None
    duration_s: float | None
    width: int | None
    height: int | None
    codec: str | None


@dataclass
class ExportOutcome:
    """What :func:`write_export` wrote: one line per file, and warnings."""

    target: ExportTarget
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def export_target(out: str, library: Library | None = None, fmt: str | None = None) -> ExportTarget:
    """Check an export destination before any search runs.

    ``out`` names a timeline file (its extension, or ``fmt``, gives the format) or, ending in
    ``/`` or naming an existing folder (or with ``fmt="mp4"``), a folder for one ``.mp4`` per hit
    (created if missing; its parent must exist).

    Raises:
        ExportError: an unknown format, a missing parent folder, a file where a folder is wanted
            or the reverse, or a place inside the library's managed folders and files.
    """
    if not out or not out.strip():
        raise ExportError("the export path is empty")
    raw = os.path.expanduser(out)
    name = fmt.lower().lstrip(".") if fmt else None
    want_dir = raw.endswith(("/", os.sep)) or os.path.isdir(raw)
    path = Path(raw).absolute()
    shown = clean_text(str(path))
    if name == CLIPS_FORMAT or (want_dir and name is None):
        if path.exists() and not path.is_dir():
            raise ExportError(f"{shown} is a file; .mp4 clips go into a folder (end the path with /)")
        if not path.parent.is_dir():
            raise ExportError(f"{clean_text(str(path.parent))}: no such folder")
        target = ExportTarget(path, "clips")
    else:
        if want_dir:
            raise ExportError(f"{shown} is a folder; give a file name ending in {', '.join(FORMATS)} "
                              "(or leave out --format to write one .mp4 per hit into it)")
        target = ExportTarget(path, "timeline", format_for(raw, name))
        if not path.parent.is_dir():
            raise ExportError(f"{clean_text(str(path.parent))}: no such folder")
    if library is not None:
        _refuse_managed(target, library)
    return target


def _real(path: Path) -> Path:
    """``path`` with every link of its existing part resolved (the file itself may not exist yet)."""
    if path.exists():
        return path.resolve()
    return path.parent.resolve() / path.name


def _refuse_managed(target: ExportTarget, library: Library) -> None:
    real = _real(target.path)
    root = library.root.resolve()
    shown = clean_text(str(target.path))
    if real.is_relative_to(root):
        parts = real.relative_to(root).parts
        if parts and parts[0] in MANAGED_DIRS or (len(parts) == 1 and parts[0] in MANAGED_FILES):
            what = f"is the library's own {parts[0]}" if parts[0] in MANAGED_FILES else \
                f"is inside the library's own {parts[0]}/"
            raise ExportError(f"{shown} {what}, which vidsearch manages; exports go elsewhere (another folder, "
                              "or a new one in the library)")
    if library.exists():
        try:
            uri = library.read_manifest().shards_uri
        except LibraryError:  # a bad manifest is the search's error to report, not this check's
            uri = None
        if uri and uri.startswith("file://"):
            base = Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path)).resolve()
            if real == base or real.is_relative_to(base):
                raise ExportError(f"{shown} is inside the library's shard location {clean_text(uri)}")


def source_rows(con: Any, video_ids: Sequence[str]) -> dict[str, SourceRow]:
    """Catalog facts of these videos (exact path from ``path_bytes``, rate, size, codec), by id.

    ``con``: a catalog connection (the searcher's sandbox, or ``open_catalog_readonly().con``);
    the ids are bound as one list parameter.
    """
    from vidsearch.search.sandbox import run_query

    ids = sorted(set(video_ids))
    if not ids:
        return {}
    t = run_query(con, "SELECT video_id, path_bytes, status, fps, duration_s, width, height, codec FROM videos "
                       "WHERE video_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
    out = {}
    for r in t.to_pylist():
        out[r["video_id"]] = SourceRow(os.fsdecode(r["path_bytes"]), r["status"], r["fps"], r["duration_s"],
                                       r["width"], r["height"], r["codec"])
    return out


def to_export_hits(hits: Sequence[Hit], sources: dict[str, SourceRow], *,
                   query: str | None) -> tuple[list[ExportHit], list[str]]:
    """The hits (in rank order) as export hits at their exact file paths.

    A hit whose video the library no longer has, or whose file now holds other content (a
    ``replaced`` video), is left out with a warning: its path would name the wrong footage.
    """
    out: list[ExportHit] = []
    warnings: list[str] = []
    for h in sorted(hits, key=lambda h: h.rank):
        src = sources.get(h.video_id)
        if src is None or src.status == STATUS_REPLACED:
            why = "is no longer in the library" if src is None else "was replaced by other content at its path"
            warnings.append(f"hit {h.rank}: {clean_text(h.path)} {why}; left out of the export")
            continue
        if not os.path.isabs(src.path):
            warnings.append(f"hit {h.rank}: {clean_text(src.path)} is not an absolute path; left out of the export")
            continue
        out.append(ExportHit(
            path=src.path, start_s=float(h.start_s), end_s=float(h.end_s), rank=h.rank, score=float(h.score),
            video_id=h.video_id, clip_id=h.clip_id, query=query,
            fps=src.fps if src.fps and src.fps > 0 else None, duration_s=src.duration_s,
            width=src.width, height=src.height, codec=src.codec))
    return out, warnings


def default_title(query: str | None, like_clip_id: int | None) -> str:
    """The timeline's name: the query, or what a query by example asked for."""
    if query:
        return query
    return f"clips like {like_clip_id}" if like_clip_id is not None else "vidsearch hits"


def write_export(target: ExportTarget, hits: Sequence[ExportHit], *, title: str) -> ExportOutcome:
    """Write the hits to ``target`` (a timeline file, or one ``.mp4`` per hit into a folder).

    Returns:
        One human line per written file (for clips: stream copy or re-encode, and why) and the
        warnings (sources not readable, rates conformed).

    Raises:
        ExportError: nothing to export, a source that cannot be cut, an unwritable destination.
    """
    outcome = ExportOutcome(target)
    if not hits:
        raise ExportError("nothing to export: the search has no hits")
    if target.kind == "timeline":
        from vidsearch.search.timecode import format_rate

        try:
            report = export_timeline(hits, target.path, fmt=target.fmt, title=title)
        except OSError as e:
            raise ExportError(f"{clean_text(str(target.path))}: {e.strerror or e}") from None
        tc = " drop-frame" if report.drop_frame else ""
        outcome.lines.append(f"exported {report.events} hit{'s' if report.events != 1 else ''} to "
                             f"{clean_text(str(report.path))} ({target.describe()}, {format_rate(report.rate)} fps"
                             f"{tc} timeline)")
        outcome.warnings += report.warnings
        return outcome
    from vidsearch.search.trim import trim_hits

    readable = []
    for h in hits:
        if os.access(os.fsencode(h.path), os.R_OK):
            readable.append(h)
        else:
            outcome.warnings.append(f"hit {h.rank}: {clean_text(h.path)} cannot be read; no clip written for it")
    if not readable:
        raise ExportError("no hit's video can be read; nothing exported")
    try:
        clips = trim_hits(readable, target.path)
    except OSError as e:
        raise ExportError(f"{clean_text(str(target.path))}: {e.strerror or e}") from None
    outcome.lines.append(f"exported {len(clips)} clip{'s' if len(clips) != 1 else ''} to "
                         f"{clean_text(str(target.path))}{os.sep}:")
    for c in clips:
        outcome.lines.append(f"  {c.path.name}  {c.mode}: {c.reason}")
    return outcome
