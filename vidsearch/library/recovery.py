"""What a writer checks and repairs when it takes a library, and what readers may only report.

* :func:`clean_tmp` and :func:`remove_unlisted`: files an interrupted commit left (rule 4).
* :func:`shard_problems`: listed shard files that are missing, differ from their SHA-256, or are
  not the table they should be (F10, D7).
* :func:`quarantine_rows`: the video rows that keep a quarantined shard's videos visible as failed.
* :func:`settled_runs` / :func:`reported_runs`: runs left ``running`` by a writer that died (D8). A
  writer records them as ``interrupted`` once it holds the lock (their writer cannot be alive); a
  reader only reports them so, writing nothing.

Every function here is given the parts it works on (a shard store, a folder, a manifest).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa

from vidsearch.library.base import utcnow
from vidsearch.library.shards import SHARDS_OWNER, ShardStore, is_shard_file, schema_problem
from vidsearch.schemas.manifest import CLIPS_TABLE, VIDEOS_TABLE, Manifest
from vidsearch.schemas.tables import STATUS_DONE, STATUS_FAILED, STATUS_PARTIAL, VIDEO_SCHEMA, clip_schema
from vidsearch.schemas.text_tables import EXTRA_TABLES

_logger = logging.getLogger(__name__)

RUN_RUNNING = "running"
RUN_INTERRUPTED = "interrupted"
RUN_FAILED = "failed"


def clean_tmp(tmp_dir: Path) -> list[str]:
    """Delete every file in ``.tmp`` (nothing there is ever read as data)."""
    removed: list[str] = []
    if tmp_dir.is_dir():
        for p in tmp_dir.iterdir():
            if p.is_file() or p.is_symlink():
                p.unlink()
                removed.append(str(p))
    return removed


def remove_unlisted(store: ShardStore, m: Manifest) -> list[str]:
    """Delete shard files (any table) the manifest does not list.

    A shard renamed into place but not yet in the manifest (a kill between the two) is deleted:
    its videos are not marked done anywhere, so the resumed run redoes them.
    """
    removed: list[str] = []
    listed = m.shard_file_names
    for name in store.names():
        if is_shard_file(name) and name not in listed:
            shown = store.where(name)
            _logger.warning("removing unlisted shard %s (left by an interrupted commit)", shown)
            store.delete(name)
            removed.append(shown)
    return removed


def expected_schema(table: str, m: Manifest) -> pa.Schema | None:
    """The schema a shard file of ``table`` must have in this library (None: not known here)."""
    if table == CLIPS_TABLE and m.model is not None:
        return clip_schema(m.model.embed_dim)
    if table == VIDEOS_TABLE:
        return VIDEO_SCHEMA
    return EXTRA_TABLES.get(table)


def shard_problems(store: ShardStore, m: Manifest) -> dict[int, list[str]]:
    """Listed shards whose files are missing, differ from their SHA-256, or have a wrong schema.

    Reads every listed file once (hash) plus its Parquet footer (schema).

    Returns:
        {shard_id: problems}; empty when every shard is intact.
    """
    out: dict[int, list[str]] = {}
    for s in m.shards:
        for table, (rel, digest) in s.files().items():
            found = store.inspect(rel)
            where = store.where(rel)
            if found is None:
                out.setdefault(s.shard_id, []).append(f"missing shard {where}")
                continue
            got, schema = found
            expected = expected_schema(table, m)
            if got != digest:
                out.setdefault(s.shard_id, []).append(f"SHA-256 mismatch in {where}")
            elif isinstance(schema, str):
                out.setdefault(s.shard_id, []).append(f"{where}: {schema}")
            elif expected is not None and (why := schema_problem(schema, expected)):
                out.setdefault(s.shard_id, []).append(f"wrong schema in {where} ({why})")
    return out


def stray_files(store: ShardStore, m: Manifest, names: list[str]) -> list[str]:
    """Problems for files in the shard location that the manifest does not list (ignored by readers)."""
    listed = m.shard_file_names
    return [f"stray {store.kind} {store.where(n)} (not in the manifest; ignored)"
            for n in names if n not in listed and n != SHARDS_OWNER]


def quarantine_rows(rows: list[dict[str, Any]], why: str, stamp: str) -> list[dict[str, Any]]:
    """Video rows to commit before setting bad shards aside (see Library.quarantine_bad_shards).

    A video that was searchable gets a ``failed`` row (``error_type=ShardCorrupt``, ``attempts=0``)
    so that ``status`` shows it and the next ingest of its file embeds it again; one that had failed
    or was replaced keeps its row unchanged (its attempt count stays).
    """
    out = []
    for r in rows:
        r = {k: v for k, v in r.items() if k != "shard_id"}
        if r["status"] in (STATUS_DONE, STATUS_PARTIAL):
            r.update(status=STATUS_FAILED, stage="write", error_type="ShardCorrupt", attempts=0,
                     num_clips=0, coverage=None, run_id=f"quarantine-{stamp}", ingested_at=utcnow(),
                     error_message=f"{r['path']!r}: its clips were in a shard that is missing or "
                                   f"corrupt ({why}); set aside in quarantine/. The next ingest of "
                                   "this file embeds it again")
        out.append(r)
    return out


def _last_activity(run: dict[str, Any], m: Manifest) -> str | None:
    """When a dead run was last seen at work: its newest shard's time, else its start."""
    times = [s.created_at for s in m.shards if s.run_id == run.get("run_id")]
    return max(times) if times else run.get("started_at")


def settled_runs(m: Manifest, status: str = RUN_INTERRUPTED, ended_at: str | None = None) -> list[dict[str, Any]]:
    """The records of ``m``'s runs still marked running, closed with ``status``.

    ``ended_at``: the end time to record; None = the run's last activity (a writer that finds a
    run its predecessor left running cannot know when that process died).
    """
    return [{**r, "status": status, "ended_at": ended_at or _last_activity(r, m)}
            for r in m.runs if r.get("status") == RUN_RUNNING]


def reported_runs(m: Manifest, writer_alive: bool) -> list[dict[str, Any]]:
    """``m``'s runs as readers should show them: with no live writer, a ``running`` run is dead."""
    if writer_alive:
        return list(m.runs)
    dead = {r["run_id"]: r for r in settled_runs(m)}
    return [dead.get(r.get("run_id", ""), r) for r in m.runs]
