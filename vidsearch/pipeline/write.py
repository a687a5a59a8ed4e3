"""Write stage: the one writer. Finished videos -> clip rows + video rows -> committed shard pairs.

A video reaches the writer only when it is settled: every clip embedded (done/partial) or failed.
Its clip rows and its video row go into the same :meth:`Library.commit`, so a video is marked done
in the catalog only after its clips are committed, and a kill between commits loses only videos
that were never marked done (they are redone by the next run).

Text (issue 14, 15): a video's text outcomes (subtitles, speech, screen text) ride in the same
commit as its clips: their rows in the extra tables ``transcripts`` / ``screen_text`` and one
``text_status`` row per stage (ok, none, silent, no_audio, failed: the resume state of that
stage). A video embedded earlier gets a text-only commit (no clip or video row).

The catalog refresh is deferred. A refresh copies the whole ``catalog.duckdb`` (so readers never
wait on the writer), so refreshing at every commit costs O(library) per commit and O(N^2) over a
long run. The writer commits shards as before (durable progress; the manifest is the commit
point) but refreshes the catalog only once ``max(catalog_refresh_s, refresh_overhead x the last
refresh's fixed cost)`` has passed since the last one, and always in :meth:`ShardWriter.finish`
(the runner's final ``record_run`` does it for ingest). The fixed cost is the refresh minus
inserting the new shards' rows (copy, open, checkpoint, swap: it grows with the catalog): the
inserts are the same total work however they are batched, and counting them would let the lag
grow without bound once inserting alone took a tenth of the commit period. So copying stays
under ~1 / (1 + refresh_overhead) of the wall time and the lag stays bounded. The runner reads
resume state from the catalog only after making it current.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

from vidsearch.library import Library, crash_point, utcnow
from vidsearch.pipeline.types import ClipSpan, ProbeInfo, TextOutcome, VideoTask
from vidsearch.schemas import ids
from vidsearch.schemas.manifest import ModelInfo
from vidsearch.schemas.tables import STATUS_FAILED, VIDEO_SCHEMA, clip_schema
from vidsearch.schemas.text_tables import (
    KIND_TABLE,
    TEXT_STATUS_SCHEMA,
    screen_text_table,
    transcripts_table,
)
from vidsearch.schemas.times import round_ms

_logger = logging.getLogger(__name__)


def video_row(task: VideoTask | None, *, status: str, run_id: str, attempts: int,
              path_bytes: bytes | None = None, video_id: str | None = None,
              probe: ProbeInfo | None = None, coverage: float | None = None, num_clips: int = 0,
              stage: str | None = None, error_type: str | None = None,
              error_message: str | None = None, ingested_at: dt.datetime | None = None) -> dict[str, Any]:
    """One ``videos`` row (VIDEO_SCHEMA) for a settled video (``task`` or ``path_bytes`` names it;
    ``ingested_at`` defaults to now)."""
    pb = task.path_bytes if task is not None else path_bytes
    if pb is None:
        raise ValueError("video_row needs a task or path_bytes")
    return {
        "video_id": task.video_id if task is not None else video_id,
        "path": ids.display_path(pb), "path_bytes": pb,
        "size_bytes": task.size_bytes if task else None, "mtime": task.mtime if task else None,
        "duration_s": round_ms(probe.duration_s) if probe else None, "fps": probe.fps if probe else None,
        "frame_count": probe.frame_count if probe else None,
        "width": probe.width if probe else None, "height": probe.height if probe else None,
        "codec": probe.codec if probe else None, "container": probe.container if probe else None,
        "rotation": probe.rotation if probe else None, "coverage": coverage,
        "num_clips": num_clips, "status": status, "stage": stage, "error_type": error_type,
        "error_message": error_message, "attempts": attempts, "run_id": run_id,
        "ingested_at": ingested_at or utcnow(),
    }


def failure_row(task: VideoTask | None, error_type: str, stage: str, message: str, *, run_id: str,
                attempts: int, path_bytes: bytes | None = None, video_id: str | None = None,
                probe: ProbeInfo | None = None, ingested_at: dt.datetime | None = None) -> dict[str, Any]:
    """A failed video row; the message is one line naming the file."""
    pb = task.path_bytes if task is not None else path_bytes
    if pb is None:
        raise ValueError("failure_row needs a task or path_bytes")
    line = f"{ids.display_path(pb)!r}: {message}".replace("\n", " ")
    return video_row(task, status=STATUS_FAILED, run_id=run_id, attempts=attempts, path_bytes=pb,
                     video_id=video_id, probe=probe, stage=stage, error_type=error_type,
                     error_message=line, ingested_at=ingested_at)


@dataclass
class PendingVideo:
    """A settled video waiting for the next commit (``row`` None: text only, for a video
    embedded by an earlier run)."""

    row: dict[str, Any] | None
    clips: list[ClipSpan] = field(default_factory=list)
    embeddings: np.ndarray | None = None
    extra_rows: list[dict[str, Any]] = field(default_factory=list)  # e.g. a "replaced" row
    text: list[TextOutcome] = field(default_factory=list)           # text stages settled with it
    text_status: list[dict[str, Any]] = field(default_factory=list)  # their text_status rows


def text_tables(items: list[PendingVideo], run_id: str) -> dict[str, pa.Table]:
    """The extra tables of a commit: ``text_status``, ``transcripts``, ``screen_text`` (only those with rows)."""
    status = [r for v in items for r in v.text_status]
    if not status:
        return {}
    out = {"text_status": pa.Table.from_pylist(status, schema=TEXT_STATUS_SCHEMA)}
    segments = [r for v in items for o in v.text if KIND_TABLE[o.kind] == "transcripts" for r in o.rows]
    screen = [r for v in items for o in v.text if KIND_TABLE[o.kind] == "screen_text" for r in o.rows]
    if segments:
        out["transcripts"] = transcripts_table(segments, run_id)
    if screen:
        out["screen_text"] = screen_text_table(screen, run_id)
    return out


class ShardWriter:
    """Buffers settled videos and commits them as shard pairs (the only writer of the library).

    Args:
        library: the library; the caller holds its lock and made its catalog current.
        model: the embedding model the rows belong to.
        run_id: the run the rows are written by.
        shard_rows: commit once this many clips are queued.
        commit_interval_s: ... or once this long has passed since the last commit.
        catalog_refresh_s: refresh the catalog at most this often (default 10 s: a search during
            the run sees new commits within about that long while the catalog is small; the
            overhead rule below spaces refreshes out as it grows).
        refresh_overhead: ... and only after this many times the last refresh's fixed cost has
            passed. ``catalog_refresh_s=0, refresh_overhead=0`` refreshes at every commit.
    """

    def __init__(self, library: Library, model: ModelInfo, run_id: str, shard_rows: int,
                 commit_interval_s: float, *, catalog_refresh_s: float = 10.0,
                 refresh_overhead: float = 10.0) -> None:
        self.library, self.model, self.run_id = library, model, run_id
        self.shard_rows, self.commit_interval_s = shard_rows, commit_interval_s
        self.catalog_refresh_s = catalog_refresh_s
        self.refresh_overhead = refresh_overhead
        self.schema = clip_schema(model.embed_dim)
        self.pending: list[PendingVideo] = []
        self.pending_clips = 0
        self.last_commit = time.monotonic()
        self.last_refresh = time.monotonic()
        self.last_refresh_fixed_s = 0.0
        self.catalog_behind = False
        self.commits = 0
        self.refreshes = 0
        self.refresh_total_s = 0.0
        self.clips_committed = 0

    def add(self, video: PendingVideo) -> None:
        """Queue a settled video; commits when the shard is full or the interval has passed."""
        self.pending.append(video)
        self.pending_clips += len(video.clips)
        if (self.pending_clips >= self.shard_rows
                or time.monotonic() - self.last_commit >= self.commit_interval_s):
            self.flush()

    def flush(self) -> None:
        """Commit everything queued (no-op when nothing is queued); refresh the catalog if due."""
        if not self.pending:
            return
        clips, videos = self._tables(self.pending)
        extra = text_tables(self.pending, self.run_id)
        self.library.commit(clips, videos, self.run_id, refresh_catalog=False, tables=extra)
        self.catalog_behind = True
        self.commits += 1
        self.clips_committed += clips.num_rows
        _logger.info("committed %d clips of %d videos%s", clips.num_rows, videos.num_rows,
                     "".join(f", {t.num_rows} {name} rows" for name, t in extra.items()))
        self.pending, self.pending_clips = [], 0
        self.last_commit = time.monotonic()
        wait = max(self.catalog_refresh_s, self.refresh_overhead * self.last_refresh_fixed_s)
        if self.last_commit - self.last_refresh >= wait:
            self.refresh_catalog()
        else:
            crash_point("after_commit_catalog_behind")

    def refresh_catalog(self) -> None:
        """Bring ``catalog.duckdb`` up to the last commit now (timed for the adaptive policy)."""
        r = self.library.refresh_catalog()
        self.last_refresh = time.monotonic()
        self.last_refresh_fixed_s = r.fixed_seconds
        self.refresh_total_s += r.seconds
        self.refreshes += 1
        self.catalog_behind = False
        _logger.debug("catalog refreshed: %d shards in %.3f s (%.3f s inserting)", r.shards_added,
                      r.seconds, r.insert_seconds)

    def finish(self) -> None:
        """End of a run: commit what is queued and bring the catalog up to date."""
        self.flush()
        if self.catalog_behind:
            self.refresh_catalog()

    def _tables(self, items: list[PendingVideo]) -> tuple[pa.Table, pa.Table]:
        cols: dict[str, list[Any]] = {f.name: [] for f in self.schema if f.name != "embedding"}
        embs: list[np.ndarray] = []
        rows: list[dict[str, Any]] = []
        for v in items:
            rows.extend(v.extra_rows)
            if v.row is None:
                continue
            rows.append(v.row)
            if not v.clips:
                continue
            assert v.embeddings is not None and len(v.embeddings) == len(v.clips)
            for c in v.clips:
                cols["clip_id"].append(ids.clip_id(v.row["video_id"], c.start_frame, c.end_frame,
                                                   self.model.fingerprint))
                cols["video_id"].append(v.row["video_id"])
                cols["path"].append(v.row["path"])
                cols["clip_index"].append(c.clip_index)
                cols["start_s"].append(round_ms(c.start_s))
                cols["end_s"].append(round_ms(c.end_s))
                cols["start_frame"].append(c.start_frame)
                cols["end_frame"].append(c.end_frame)
                cols["frame_indices"].append(list(c.frame_indices))
                cols["frame_times_s"].append([round_ms(t) for t in c.frame_times_s])
                cols["padded"].append(c.padded)
                cols["segment"].append(c.segment)
                cols["shot_index"].append(c.shot_index)
                cols["model"].append(self.model.name)
                cols["model_fingerprint"].append(self.model.fingerprint)
                cols["run_id"].append(self.run_id)
            embs.append(np.asarray(v.embeddings, dtype=np.float32))
        dim = self.model.embed_dim
        flat = np.concatenate(embs).reshape(-1) if embs else np.zeros(0, np.float32)
        arrays = [pa.array(cols[f.name], type=f.type) for f in self.schema if f.name != "embedding"]
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim))
        clips = pa.Table.from_arrays(arrays, schema=self.schema)
        videos = pa.Table.from_pylist(rows, schema=VIDEO_SCHEMA)
        return clips, videos
