"""The resume selection as a pure function: catalog rows in, (todo, rows, counts) out.

No backend, no library, no files: ``select_work`` decides from the discovered tasks, the
catalog's latest row per video and a stand-in for "does this path still exist".
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from vidsearch.pipeline.discover import DiscoverFailure
from vidsearch.pipeline.resume import select_work
from vidsearch.pipeline.types import VideoTask

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
THEN = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def task(name: str, vid: str) -> VideoTask:
    p = f"/v/{name}".encode()
    return VideoTask(p, p.decode(), vid, 100, THEN)


def row(name: str, vid: str, status: str, attempts: int = 1, error_type: str | None = None) -> dict[str, Any]:
    p = f"/v/{name}".encode()
    return {"video_id": vid, "path": p.decode(), "path_bytes": p, "status": status, "attempts": attempts,
            "error_type": error_type, "run_id": "old", "ingested_at": THEN, "shard_id": 7, "num_clips": 3}


def state(*rows: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[bytes, str]]:
    by_id = {r["video_id"]: r for r in rows}
    by_path = {r["path_bytes"]: r["video_id"] for r in rows if r["status"] != "replaced"}
    return by_id, by_path


def select(tasks: list[VideoTask], rows: tuple[dict[str, Any], ...] = (), failures: tuple[DiscoverFailure, ...] = (),
           exists: frozenset[bytes] = frozenset(), **kw: Any) -> Any:
    by_id, by_path = state(*rows)
    return select_work(tasks, list(failures), by_id, by_path, run_id="run2", now=NOW,
                       retry_failed=kw.get("retry_failed", False), max_attempts=kw.get("max_attempts", 2),
                       exists=lambda p: p in exists)


def test_new_videos_are_todo_with_attempt_one() -> None:
    sel = select([task("a.mp4", "A"), task("b.mp4", "B")])
    assert [(t.task.video_id, t.task.attempts, t.replaces) for t in sel.todo] == [("A", 1, None), ("B", 1, None)]
    assert sel.rows == [] and (sel.counts.seen, sel.counts.skipped) == (2, 0)


def test_done_is_skipped_and_a_rerun_does_nothing() -> None:
    sel = select([task("a.mp4", "A")], (row("a.mp4", "A", "done"),), exists=frozenset({b"/v/a.mp4"}))
    assert sel.todo == [] and sel.rows == [] and sel.counts.skipped == 1


def test_moved_video_gets_a_path_row_not_a_re_embed() -> None:
    old = row("old.mp4", "A", "done")
    sel = select([task("new.mp4", "A")], (old,))  # /v/old.mp4 no longer exists
    assert sel.todo == [] and sel.counts.moved == 1
    (r,) = sel.rows
    assert (r["path_bytes"], r["path"], r["status"], r["run_id"], r["ingested_at"]) == (
        b"/v/new.mp4", "/v/new.mp4", "done", "run2", NOW)
    assert "shard_id" not in r and old["path_bytes"] == b"/v/old.mp4"  # the input row is untouched
    # Still there (a copy): not a move.
    sel = select([task("new.mp4", "A")], (old,), exists=frozenset({b"/v/old.mp4"}))
    assert sel.rows == [] and (sel.counts.moved, sel.counts.skipped) == (0, 1)


def test_failed_retried_until_quarantined_and_deterministic_not_retried() -> None:
    sel = select([task("a.mp4", "A")], (row("a.mp4", "A", "failed", 1, "DecodeTimeout"),))
    assert [t.task.attempts for t in sel.todo] == [2]
    sel = select([task("a.mp4", "A")], (row("a.mp4", "A", "failed", 2, "DecodeTimeout"),))
    assert sel.todo == [] and sel.counts.quarantined == 1
    sel = select([task("a.mp4", "A")], (row("a.mp4", "A", "failed", 1, "NotAVideo"),))
    assert sel.todo == [] and sel.counts.failed_before == 1
    # --retry-failed retries both, and a partial video too.
    for r in (row("a.mp4", "A", "failed", 2, "DecodeTimeout"), row("a.mp4", "A", "failed", 1, "NotAVideo"),
              row("a.mp4", "A", "partial", 1, "PartialDecode")):
        sel = select([task("a.mp4", "A")], (r,), retry_failed=True)
        assert [t.task.attempts for t in sel.todo] == [r["attempts"] + 1], r


def test_partial_is_not_retried_by_default() -> None:
    sel = select([task("a.mp4", "A")], (row("a.mp4", "A", "partial", 1, "PartialDecode"),))
    assert sel.todo == [] and sel.counts.failed_before == 1


def test_new_content_at_a_known_path_replaces_the_old_row() -> None:
    sel = select([task("a.mp4", "B")], (row("a.mp4", "A", "done"),))
    (todo,) = sel.todo
    assert todo.task.video_id == "B" and todo.replaces is not None
    assert (todo.replaces["video_id"], todo.replaces["status"], todo.replaces["run_id"]) == ("A", "replaced", "run2")
    assert "shard_id" not in todo.replaces and sel.counts.replaced == 1


def test_duplicates_in_one_run_are_processed_once() -> None:
    sel = select([task("a.mp4", "A"), task("copy.mp4", "A")])
    assert [t.task.display_path for t in sel.todo] == ["/v/a.mp4"] and sel.counts.duplicate == 1


def test_discover_failures_become_failed_rows_with_attempts() -> None:
    f = DiscoverFailure(b"/v/gone.mp4", "NotFound", "dangling symbolic link")
    sel = select([], failures=(f,))
    (r,) = sel.rows
    assert (r["status"], r["stage"], r["error_type"], r["attempts"], r["ingested_at"]) == (
        "failed", "discover", "NotFound", 1, NOW)
    assert r["video_id"] == f.video_id and "gone.mp4" in r["error_message"] and sel.counts.failed_now == 1
    # Quarantined after max_attempts like any transient failure.
    sel = select([], (row("gone.mp4", f.video_id, "failed", 2, "NotFound"),), failures=(f,))
    assert sel.rows == [] and sel.counts.quarantined == 1
