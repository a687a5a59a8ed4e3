"""Text stages of ingest without a model: which videos get which stage (resume rules), how text
commits land in the catalog (a newer status replaces the older rows of its kind, for writers and
for readers of a lagging catalog alike), the commit's text tables, and the keyword index kept by
``update_index`` (built, extended, unchanged, rebuilt when tampered with or stale)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from test_library import MODEL, make_tables

from vidsearch.indexer.keyword import KeywordIndex
from vidsearch.indexer.text import (
    keyword_behind,
    keyword_dir,
    keyword_problems,
    open_keyword_index,
    update_keyword_index,
)
from vidsearch.library import Library
from vidsearch.pipeline.resume import Selection, Todo, select_text_work
from vidsearch.pipeline.text import status_row
from vidsearch.pipeline.types import TextOutcome, VideoTask
from vidsearch.pipeline.write import PendingVideo, text_tables
from vidsearch.schemas.text_tables import TranscriptSegment, Word, segment_id

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def task(vid: str) -> VideoTask:
    return VideoTask(f"/v/{vid}.mp4".encode(), f"/v/{vid}.mp4", vid, 1, NOW)


def st(vid: str, kind: str, status: str, model: str | None = None, attempts: int = 1,
       error_type: str | None = None) -> dict[str, Any]:
    return {"video_id": vid, "kind": kind, "status": status, "model": model, "attempts": attempts,
            "error_type": error_type}


def test_select_text_work_rules() -> None:
    sel = Selection(todo=[Todo(task("new"))], searchable=[task(v) for v in (
        "done_m1", "done_m2", "silent", "no_audio", "fail1", "fail2", "audio_bad", "nothing", "subs_only")])
    state = {(v, "subtitle"): st(v, "subtitle", "none") for v in
             ("done_m1", "done_m2", "silent", "no_audio", "fail1", "fail2", "audio_bad")}
    state |= {("done_m1", "speech"): st("done_m1", "speech", "ok", "m1"),
              ("done_m2", "speech"): st("done_m2", "speech", "ok", "m2"),
              ("silent", "speech"): st("silent", "speech", "silent", "m1"),
              ("no_audio", "speech"): st("no_audio", "speech", "no_audio"),
              ("fail1", "speech"): st("fail1", "speech", "failed", "m1", 1, "TranscribeError"),
              ("fail2", "speech"): st("fail2", "speech", "failed", "m1", 2, "TranscribeError"),
              ("audio_bad", "speech"): st("audio_bad", "speech", "failed", "m1", 1, "AudioDecodeError"),
              ("subs_only", "subtitle"): st("subs_only", "subtitle", "ok")}
    kw = {"redo_other_model": False, "retry_failed": False, "max_attempts": 2}
    t = select_text_work(sel, state, stages={"speech": "m1"}, **kw)
    # A video embedded now: subtitles (read while planned) and speech; one embedded before this
    # library had subtitles ("nothing"): both, text only; no_audio and same-model results: nothing.
    assert t.work == {"new": {"subtitle": 1, "speech": 1}, "nothing": {"subtitle": 1, "speech": 1},
                      "subs_only": {"speech": 1}, "fail1": {"speech": 2}, "audio_bad": {"speech": 2}}
    c = t.of("speech")
    assert (c.done_before, c.other_model, c.failed_before, t.text_only) == (3, 1, 1, 4)
    assert c.other_models == {"m2": 1}
    t = select_text_work(sel, state, stages={"speech": "m1"}, **{**kw, "redo_other_model": True,
                                                                  "retry_failed": True})
    assert t.work["done_m2"] == {"speech": 1} and t.work["fail2"] == {"speech": 3}
    assert t.work["audio_bad"] == {"speech": 2} and "done_m1" not in t.work and "no_audio" not in t.work
    # Without --speech, only the subtitles a video lacks.
    t = select_text_work(sel, state, stages={}, **kw)
    assert t.work == {"new": {"subtitle": 1}, "nothing": {"subtitle": 1}}


def seg(vid: str, source: str, text: str, i: int = 0, model: str | None = None) -> TranscriptSegment:
    track = "asr" if source == "speech" else "sidecar:x.srt"
    words = (Word(float(i), float(i) + 0.5, f" {text.split()[0]}", 0.9),) if source == "speech" else None
    return TranscriptSegment(vid, segment_id(vid, source, track, i, i, i + 1, model), i, float(i), float(i + 1),
                             text, source, track, model=model, words=words)


def outcome(vid: str, kind: str, status: str, texts: tuple[str, ...] | list[str] = (), model: str | None = None,
            error: str | None = None) -> TextOutcome:
    rows = tuple(seg(vid, kind, t, i, model) for i, t in enumerate(texts))
    return TextOutcome(vid, kind, status, rows, model=model, error_type=error, error_message=error and "boom")


def text_commit(lib: Library, outs: list[TextOutcome], *, refresh: bool = True, with_clips: str | None = None,
                run_id: str = "r") -> None:
    pending = [PendingVideo(row=None, text=[o], text_status=[status_row(o, path=f"/v/{o.video_id}.mp4", attempts=1,
                                                                       run_id=run_id, recorded_at=NOW)])
               for o in outs]
    clips, videos = make_tables(with_clips or "z" * 32, 2 if with_clips else 0)
    if not with_clips:
        videos = videos.slice(0, 0)
    lib.commit(clips, videos, run_id, refresh_catalog=refresh, tables=text_tables(pending, run_id))


def rows(con: Any) -> list[tuple[Any, ...]]:
    return sorted(con.execute("SELECT video_id, source, text, model FROM transcripts").fetchall())


@pytest.fixture()
def text_lib(tmp_path: Path) -> Library:
    """Video a with subtitles and speech by m1; video b: speech failed, then ok by m2."""
    lib = Library(tmp_path / "lib")
    with lib.lock():
        lib.init(MODEL)
        text_commit(lib, [outcome("a", "subtitle", "ok", ["hello sea"]),
                          outcome("a", "speech", "ok", ["old words"], "m1"),
                          outcome("b", "subtitle", "none")], with_clips="a")
        text_commit(lib, [outcome("b", "speech", "failed", model="m1", error="TranscribeError")])
        text_commit(lib, [outcome("a", "speech", "ok", ["new words here"], "m2")])
    return lib


EXPECTED = [("a", "speech", "new words here", "m2"), ("a", "subtitle", "hello sea", None)]


def test_a_newer_status_replaces_the_rows_of_its_kind_for_writers_and_readers(text_lib: Library,
                                                                             tmp_path: Path) -> None:
    lib = text_lib
    m = lib.read_manifest()
    assert [sorted(s.tables) for s in m.shards] == [["text_status", "transcripts"], ["text_status"],
                                                   ["text_status", "transcripts"]]
    with lib.connect_catalog() as con:
        assert rows(con) == EXPECTED
        assert sorted(con.execute("SELECT video_id, kind, status, model FROM text_status").fetchall()) == [
            ("a", "speech", "ok", "m2"), ("a", "subtitle", "ok", None), ("b", "speech", "failed", "m1"),
            ("b", "subtitle", "none", None)]
        # The failed stage is a failures row of that stage; the video is not failed.
        assert con.execute("SELECT video_id, stage, error_type FROM failures").fetchall() == [
            ("b", "speech", "TranscribeError")]
        assert con.execute("SELECT status FROM videos WHERE video_id = 'a'").fetchone() == ("done",)
    # A reader of a catalog behind the manifest (a killed writer) sees the same rows...
    with lib.lock():
        text_commit(lib, [outcome("b", "speech", "ok", ["late words"], "m2")], refresh=False)
    with lib.connect_catalog() as con:
        assert rows(con) == sorted([*EXPECTED, ("b", "speech", "late words", "m2")])
        assert con.execute("SELECT status FROM text_status WHERE video_id = 'b' AND kind = 'speech'"
                           ).fetchone() == ("ok",)
    # ... as does one without a catalog, and a writer's refresh.
    before = lib.catalog_path.read_bytes()
    lib.catalog_path.unlink()
    with lib.connect_catalog() as con:
        assert rows(con) == sorted([*EXPECTED, ("b", "speech", "late words", "m2")])
    lib.catalog_path.write_bytes(before)
    with lib.lock():
        lib.refresh_catalog()
    with lib.connect_catalog() as con:
        assert rows(con) == sorted([*EXPECTED, ("b", "speech", "late words", "m2")])


def test_commit_refuses_a_known_text_table_of_another_schema(tmp_path: Path) -> None:
    lib = Library(tmp_path / "lib")
    with lib.lock():
        lib.init(MODEL)
        with pytest.raises(ValueError, match="transcripts does not have its schema"):
            lib.commit(*make_tables("a", 1), "r", tables={"transcripts": pa.table({"video_id": ["a"]})})
        assert lib.read_manifest().shards == ()
        lib.commit(*make_tables("a", 1), "r")  # no text at all: no keyword index, nothing to report
        assert update_keyword_index(lib).action == "none"
    assert open_keyword_index(lib) is None and keyword_problems(lib, lib.read_manifest()) == []


def test_keyword_index_follows_the_text_tables(text_lib: Library) -> None:
    lib = text_lib
    m = lib.read_manifest()
    assert keyword_problems(lib, m) == [("no keyword index yet (5 text table file(s) to index)", False)]
    with lib.lock():
        r = update_keyword_index(lib)
        assert (r.action, r.docs) == ("built", 2)
        assert update_keyword_index(lib).action == "unchanged"
    idx = KeywordIndex.open(keyword_dir(lib))
    assert [h.video_id for h in idx.search("words")] == ["a"] and not idx.search("old")
    assert keyword_problems(lib, m) == []
    assert keyword_behind(open_keyword_index(lib), m) == []
    # A later commit: only the videos it touches are rewritten (b gains speech; a keeps its two).
    with lib.lock():
        text_commit(lib, [outcome("b", "speech", "ok", ["words of b"], "m2")])
        assert keyword_problems(lib, lib.read_manifest())[0][1] is False  # behind: `vidsearch index`
        m2 = lib.read_manifest()
        assert keyword_behind(open_keyword_index(lib, m2), m2) == [m2.shards[-1].shard_id]
        r = update_keyword_index(lib)
        assert (r.action, r.docs, r.videos_refreshed) == ("extended", 3, 1)
        # A silent re-transcription leaves a without speech documents.
        text_commit(lib, [outcome("a", "speech", "silent", model="m3")])
        assert update_keyword_index(lib).docs == 2
    idx = KeywordIndex.open(keyword_dir(lib))
    assert sorted(h.video_id for h in idx.search("words")) == ["b"] and idx.search("hello")[0].video_id == "a"
    # Tampered with: readers refuse it, doctor says so, the writer rebuilds it.
    meta = idx.meta
    victim = next(iter(meta.files))
    with open(keyword_dir(lib) / meta.folder / victim, "ab") as f:
        f.write(b"x")
    assert keyword_problems(lib, lib.read_manifest())[0][1] is True
    with lib.lock():
        r = update_keyword_index(lib)
    assert r.action == "rebuilt" and "SHA-256" in (r.reason or "") and r.docs == 2
    assert keyword_problems(lib, lib.read_manifest()) == []
    # A text table set aside (its shard corrupt): stale, rebuilt from what the manifest lists.
    m = lib.read_manifest()
    last = m.shards[-1]
    (lib.root / last.tables["text_status"].file).write_bytes(b"corrupt")
    with lib.lock():
        assert lib.quarantine_bad_shards() == [last.shard_id]
        assert keyword_problems(lib, lib.read_manifest())[0][1] is True
        r = update_keyword_index(lib)
    assert r.action == "rebuilt" and r.docs == 3  # a's speech by m2 is back: the silent status is gone


def test_text_tables_of_a_commit() -> None:
    o1, o2 = outcome("a", "subtitle", "ok", ["x y"]), outcome("a", "speech", "no_audio")
    p = PendingVideo(row=None, text=[o1, o2], text_status=[
        status_row(o, path="/v/a.mp4", attempts=2, run_id="r", recorded_at=NOW) for o in (o1, o2)])
    t = text_tables([p, PendingVideo(row=None)], "r")
    assert sorted(t) == ["text_status", "transcripts"]
    assert t["transcripts"].column("text").to_pylist() == ["x y"]
    assert t["text_status"].to_pylist()[1]["status"] == "no_audio"
    assert t["text_status"].column("attempts").to_pylist() == [2, 2]
    assert text_tables([PendingVideo(row=None)], "r") == {}
    failed = status_row(outcome("a", "speech", "failed", error="E"), path="/v/a.mp4", attempts=1, run_id="r",
                        recorded_at=NOW)
    assert failed["error_message"] == "'/v/a.mp4': boom"
