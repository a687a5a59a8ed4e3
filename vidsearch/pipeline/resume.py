"""Resume: which discovered videos a run processes, decided by the catalog's latest row per video.

Rules (a rerun of the same command finishes the job and redoes nothing):

* done -> skipped; partial -> skipped (counted as "failed before") unless ``retry_failed``;
* failed -> retried while ``attempts < max_attempts``, then quarantined; errors that depend only
  on the file's bytes (:data:`~vidsearch.pipeline.types.DETERMINISTIC_ERRORS`) are not retried;
  ``retry_failed`` retries both;
* a known video at a new path whose old path is gone -> a path-update row, no re-embed (moved);
* a known path with new content -> the new video is processed and the old one's row is marked
  ``replaced`` in the same commit;
* the same content twice in one run -> processed once (duplicate).

Text stages (subtitles, speech, on-screen text; :func:`select_text_work`), per video of this run
that is or will be searchable, from its latest ``text_status`` row of each kind:

* subtitles are read for every video embedded now (while it is planned) and for a video embedded
  earlier that has no subtitle status yet (a library older than subtitles): a text-only commit;
* speech (``--speech``; likewise any stage run by a model: on-screen text, ``--ocr``, whose model
  id includes the hash of the settings that change its rows): no status -> run it (a video
  embedded earlier is transcribed or read without re-embedding); ``ok``/``silent``/``none`` by
  the same model and ``no_audio`` -> done; by another model -> kept, unless that stage is redone
  (``--retranscribe``, ``--reocr``); ``failed`` -> retried while ``attempts < max_attempts``,
  ``retry_failed`` retries all.

:func:`select_work` and :func:`select_text_work` are pure (the catalog rows come in, the decision
comes out), so the rules are tested without a backend or a library; :func:`read_state` and
:func:`read_text_state` read the rows.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from vidsearch.library import Library
from vidsearch.pipeline.discover import DiscoverFailure
from vidsearch.pipeline.types import DETERMINISTIC_ERRORS, VideoTask
from vidsearch.pipeline.write import failure_row
from vidsearch.schemas.tables import STATUS_DONE, STATUS_FAILED, STATUS_PARTIAL, STATUS_REPLACED
from vidsearch.schemas.text_tables import TEXT_FAILED, TEXT_NO_AUDIO

# Text-stage errors that depend only on the file's bytes: not retried without retry_failed. None
# so far: AudioDecodeError also covers a file that vanished or could not be read for a moment, and
# retrying a broken audio track once more costs one failed open.
DETERMINISTIC_TEXT_ERRORS: frozenset[str] = frozenset()


@dataclass
class ResumeCounts:
    """How the discovered videos were sorted (the run summary's counters)."""

    seen: int = 0
    skipped: int = 0               # settled by an earlier run (done)
    quarantined: int = 0           # failed ``max_attempts`` times; not tried again
    moved: int = 0                 # known content at a new path: path row, no re-embed
    duplicate: int = 0             # same content as another path of this run
    replaced: int = 0              # new content at a known path: the old row is marked replaced
    failed_before: int = 0         # failed for good (or partial) in an earlier run; not retried
    failed_now: int = 0            # discovery failures written by this run


@dataclass(frozen=True)
class Todo:
    """A video to process, with this run's attempt number in its task."""

    task: VideoTask
    replaces: dict[str, Any] | None = None   # the old content's row at this path, marked replaced


@dataclass
class Selection:
    """The outcome of :func:`select_work`."""

    todo: list[Todo] = field(default_factory=list)
    # Rows to commit as they are: discovery failures (status failed) and the path updates of
    # moved videos.
    rows: list[dict[str, Any]] = field(default_factory=list)
    counts: ResumeCounts = field(default_factory=ResumeCounts)
    # Videos searchable already (done or partial, moved included) and not embedded again: text
    # stages they lack run on them alone (select_text_work).
    searchable: list[VideoTask] = field(default_factory=list)


def read_state(library: Library) -> tuple[dict[str, dict[str, Any]], dict[bytes, str]]:
    """Latest row per video_id, and the video_id last ingested at each path (done, partial or
    failed: new content at the path replaces any of them, so a failure of content that is gone,
    e.g. a file caught while being written (B20), leaves the failure list).

    Writer only (lock held): a catalog left behind the manifest (a kill between deferred
    refreshes) is caught up first, else videos settled in its missing shards would be redone.
    """
    if not library.exists():
        return {}, {}
    m = library.read_manifest()
    if not m.shards:
        return {}, {}
    library.refresh_catalog(m)  # no-op when current
    with library.connect_catalog() as con:
        cur = con.execute("SELECT * FROM videos")
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    by_id = {r["video_id"]: r for r in rows}
    by_path: dict[bytes, str] = {}
    for r in sorted(rows, key=lambda r: r["status"] != STATUS_FAILED):  # a live row wins over a failed one
        if r["status"] in (STATUS_DONE, STATUS_PARTIAL, STATUS_FAILED):
            by_path[bytes(r["path_bytes"])] = r["video_id"]
    return by_id, by_path


def select_work(tasks: Sequence[VideoTask], failures: Sequence[DiscoverFailure],
                by_id: dict[str, dict[str, Any]], by_path: dict[bytes, str], *, run_id: str,
                retry_failed: bool, max_attempts: int, now: dt.datetime,
                exists: Callable[[bytes], bool] = os.path.lexists) -> Selection:
    """Sort this run's discovered files into work, rows to write as they are, and counts.

    Args:
        tasks: discovered files (fingerprinted).
        failures: paths discovery could not read.
        by_id, by_path: the catalog's state (:func:`read_state`).
        run_id: the run the new rows belong to.
        retry_failed: retry quarantined, deterministic failures and partial videos.
        max_attempts: attempts of a failed video before it is quarantined.
        now: ``ingested_at`` of the new rows.
        exists: whether a path still exists (a moved video's old path must be gone).

    Returns:
        The selection; the input rows are not modified.
    """
    sel = Selection()
    c = sel.counts

    def attempts_of(prev: dict[str, Any] | None) -> int | None:
        """This run's attempt number for a video, or None when it is not tried again."""
        if prev is None or prev["status"] == STATUS_REPLACED:
            return 1
        n = int(prev["attempts"] or 0)
        if prev["status"] == STATUS_FAILED and not retry_failed:
            if prev["error_type"] in DETERMINISTIC_ERRORS:
                c.failed_before += 1
                return None
            if n >= max_attempts:
                c.quarantined += 1
                return None
        return n + 1

    for f in failures:
        c.seen += 1
        attempts = attempts_of(by_id.get(f.video_id))
        if attempts is None:
            continue
        sel.rows.append(failure_row(None, f.error_type, "discover", f.message, run_id=run_id, attempts=attempts,
                                    path_bytes=f.path_bytes, video_id=f.video_id, ingested_at=now))
        c.failed_now += 1
    seen_ids: set[str] = set()
    present_paths = {t.path_bytes for t in tasks}
    for t in tasks:
        c.seen += 1
        if t.video_id in seen_ids:
            c.duplicate += 1
            continue
        seen_ids.add(t.video_id)
        prev = by_id.get(t.video_id)
        if prev is not None and prev["status"] == STATUS_PARTIAL and not retry_failed:
            c.failed_before += 1
            sel.searchable.append(t)
            continue
        if prev is not None and prev["status"] == STATUS_DONE:
            old_path = bytes(prev["path_bytes"])
            if old_path != t.path_bytes and old_path not in present_paths and not exists(old_path):
                # Moved or renamed: same content, so no re-embed; record the new path.
                row = {k: v for k, v in prev.items() if k != "shard_id"}
                row.update(path=t.display_path, path_bytes=t.path_bytes, mtime=t.mtime, run_id=run_id,
                           ingested_at=now)
                sel.rows.append(row)
                c.moved += 1
            else:
                c.skipped += 1
            sel.searchable.append(t)
            continue
        attempts = attempts_of(prev)
        if attempts is None:
            continue
        replaces = None
        old_id = by_path.get(t.path_bytes)
        if old_id is not None and old_id != t.video_id and old_id not in seen_ids:
            replaces = {k: v for k, v in by_id[old_id].items() if k != "shard_id"}
            replaces.update(status=STATUS_REPLACED, run_id=run_id, ingested_at=now)
            c.replaced += 1
        task = VideoTask(t.path_bytes, t.display_path, t.video_id, t.size_bytes, t.mtime, attempts)
        sel.todo.append(Todo(task, replaces))
    return sel


# ---- text stages ----------------------------------------------------------------------------------
def read_text_state(library: Library) -> dict[tuple[str, str], dict[str, Any]]:
    """Latest ``text_status`` row per (video_id, kind). Writer only, after :func:`read_state`
    (which made the catalog current)."""
    if not library.exists() or not library.read_manifest().shards:
        return {}
    with library.connect_catalog() as con:
        cur = con.execute("SELECT video_id, kind, status, model, attempts, error_type FROM text_status")
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    return {(r["video_id"], r["kind"]): r for r in rows}


@dataclass
class TextCounts:
    """How one model-run text stage (speech, screen) was sorted (the run summary's counters)."""

    done_before: int = 0       # a status (ok, silent, none, no_audio) from this model
    other_model: int = 0       # done by another model; kept (redo_other_model redoes them)
    failed_before: int = 0     # failed for good (deterministic or max_attempts)
    other_models: dict[str, int] = field(default_factory=dict)   # model -> videos kept


@dataclass
class TextSelection:
    """The outcome of :func:`select_text_work`: per video, the text stages to run and their attempt."""

    work: dict[str, dict[str, int]] = field(default_factory=dict)   # video_id -> {kind: attempt}
    counts: dict[str, TextCounts] = field(default_factory=dict)    # per model-run stage
    text_only: int = 0         # videos embedded earlier that get text stages now

    def of(self, kind: str) -> TextCounts:
        return self.counts.get(kind, TextCounts())


def select_text_work(sel: Selection, state: dict[tuple[str, str], dict[str, Any]], *,
                     stages: dict[str, str | None], redo_other_model: bool | Collection[str], retry_failed: bool,
                     max_attempts: int) -> TextSelection:
    """Which text stages each video of this run gets (module docstring).

    Subtitles are always a stage; the others run by a model are those asked for (``stages``).

    Args:
        sel: the visual selection (its ``todo`` and ``searchable`` videos).
        state: latest ``text_status`` rows (:func:`read_text_state`).
        stages: model-run stages of this run -> the id of the model it runs with (``{"speech":
            id}`` for ``--speech``; None: unknown, any model counts as this one).
        redo_other_model: run again what another model did: True for every stage, else the
            stages to redo (``{"speech"}`` for ``--retranscribe``, ``{"screen"}`` for ``--reocr``).
        retry_failed: retry failures for good too.
        max_attempts: attempts of a failed stage before it is given up.
    """
    out = TextSelection(counts={k: TextCounts() for k in stages})

    def attempt(vid: str, kind: str) -> int | None:
        c, model = out.counts[kind], stages[kind]
        prev = state.get((vid, kind))
        if prev is None:
            return 1
        n = int(prev["attempts"] or 0)
        if prev["status"] == TEXT_NO_AUDIO:
            c.done_before += 1
            return None
        if prev["status"] == TEXT_FAILED:
            if not retry_failed and (prev["error_type"] in DETERMINISTIC_TEXT_ERRORS or n >= max_attempts):
                c.failed_before += 1
                return None
            return n + 1
        if model is None or prev["model"] == model:
            c.done_before += 1
            return None
        if redo_other_model is True or (not isinstance(redo_other_model, bool) and kind in redo_other_model):
            return 1
        c.other_model += 1
        c.other_models[str(prev["model"])] = c.other_models.get(str(prev["model"]), 0) + 1
        return None

    def kinds(vid: str, embedding_now: bool) -> dict[str, int]:
        want: dict[str, int] = {}
        sub = state.get((vid, "subtitle"))
        if embedding_now or sub is None or sub["status"] == TEXT_FAILED:
            want["subtitle"] = 1 if sub is None else int(sub["attempts"] or 0) + 1
        for kind in stages:
            if (a := attempt(vid, kind)) is not None:
                want[kind] = a
        return want

    for todo in sel.todo:
        out.work[todo.task.video_id] = kinds(todo.task.video_id, True)
    for t in sel.searchable:
        want = kinds(t.video_id, False)
        if want:
            out.work[t.video_id] = want
            out.text_only += 1
    return out
