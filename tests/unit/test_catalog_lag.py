"""A catalog behind the manifest: deferred refreshes (ShardWriter), catching up, and searching meanwhile.

The catalog is a cache of the shards; the manifest is the commit point. A long run refreshes the
catalog only now and then (a refresh copies the whole file), so readers may see it a few commits
behind: they must never crash or show a hit without its clip row, and must pick up the refreshed
catalog. Writers must catch it up before reading resume state from it.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pytest
from conftest import SyntheticLibrary, make_shard_tables

from vidsearch.indexer import update_index
from vidsearch.library import Library
from vidsearch.pipeline.runner import _read_state
from vidsearch.pipeline.types import ClipSpan, VideoTask
from vidsearch.pipeline.write import PendingVideo, ShardWriter, video_row
from vidsearch.schemas.manifest import ModelInfo
from vidsearch.search import Filters, Searcher

DIM = 8
MODEL = ModelInfo(name="synthetic", fingerprint="fp-lag", embed_dim=DIM, num_frames=4)


def pending(i: int, clips: int = 3) -> PendingVideo:
    path = f"/lag/video_{i:04d}.mp4".encode()
    task = VideoTask(path, path.decode(), f"{i:032x}", 1000, dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    spans = [ClipSpan(c, 10 * c, 10 * c + 10, float(c), float(c + 1), (10 * c,) * 4, (float(c),) * 4,
                      False, "fixed") for c in range(clips)]
    emb = np.random.default_rng(i).standard_normal((clips, DIM)).astype(np.float32)
    row = video_row(task, status="done", run_id="r", attempts=1, num_clips=clips)
    return PendingVideo(row=row, clips=spans, embeddings=emb / np.linalg.norm(emb, axis=1, keepdims=True))


def catalog_videos(lib: Library) -> int:
    """Videos in the catalog file itself (the cache that lags)."""
    with duckdb.connect(str(lib.catalog_path), read_only=True) as con:
        return con.execute("SELECT count(*) FROM videos").fetchone()[0]


def reader_videos(lib: Library) -> int:
    """Videos a reader sees (the catalog completed from newer shards: D9)."""
    with lib.connect_catalog() as con:
        return con.execute("SELECT count(*) FROM videos").fetchone()[0]


def test_commit_without_refresh_then_refresh_catches_up(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lib = Library(tmp_path / "lib")
    with lib.lock():
        lib.init(MODEL)
        w = ShardWriter(lib, MODEL, "r", shard_rows=1, commit_interval_s=1e9,
                        catalog_refresh_s=0.0, refresh_overhead=0.0)
        w.add(pending(0))  # refreshed at once (every-commit mode)
        assert lib.catalog_is_current() and catalog_videos(lib) == 1
        clips, videos = w._tables([pending(1), pending(2)])
        lib.commit(clips, videos, "r", refresh_catalog=False)
        # Committed (the manifest lists it) but the catalog, a cache, still shows the old state;
        # a reader completes it from the newer shard without writing anything.
        assert len(lib.read_manifest().shards) == 2
        assert not lib.catalog_is_current() and catalog_videos(lib) == 1
        assert reader_videos(lib) == 3 and not lib.catalog_is_current()
        r = lib.refresh_catalog()
        assert r.shards_added == 1 and r.seconds >= r.insert_seconds > 0
        assert lib.catalog_is_current() and catalog_videos(lib) == 3
        again = lib.refresh_catalog()  # already current: no copy, nothing added
        assert again.shards_added == 0 and again.insert_seconds == 0


def test_writer_defers_refresh_by_interval_and_fixed_cost(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lib = Library(tmp_path / "lib")
    with lib.lock():
        lib.init(MODEL)
        lib.refresh_catalog()  # as the runner's record_run does before the writer starts
        w = ShardWriter(lib, MODEL, "r", shard_rows=3, commit_interval_s=1e9, catalog_refresh_s=30.0)
        for i in range(4):
            w.add(pending(i))  # four commits (3 clips each), all inside the 30 s interval
        assert w.commits == 4 and w.refreshes == 0
        assert not lib.catalog_is_current() and catalog_videos(lib) == 0
        w.last_refresh -= 31  # the interval has passed: the next commit refreshes
        w.add(pending(4))
        assert w.refreshes == 1 and lib.catalog_is_current() and catalog_videos(lib) == 5
        # A slow refresh stretches the wait to refresh_overhead x its fixed cost (10 x 10 s).
        w.last_refresh_fixed_s = 10.0
        w.last_refresh -= 60
        w.add(pending(5))
        assert w.refreshes == 1 and not lib.catalog_is_current()
        w.last_refresh -= 41
        w.add(pending(6))
        assert w.refreshes == 2 and catalog_videos(lib) == 7
        w.add(pending(7))
        assert not lib.catalog_is_current()
        w.finish()  # the end of a run always leaves the catalog current
        assert lib.catalog_is_current() and catalog_videos(lib) == 8
        assert w.refreshes == 3


def test_read_state_catches_up_a_lagging_catalog(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Resume reads the catalog: a lagging one would make the run redo (duplicate) settled videos."""
    lib = Library(tmp_path / "lib")
    with lib.lock():
        lib.init(MODEL)
        lib.refresh_catalog()
        w = ShardWriter(lib, MODEL, "r", shard_rows=3, commit_interval_s=1e9, catalog_refresh_s=1e9)
        for i in range(3):
            w.add(pending(i))
    # As a kill between deferred refreshes leaves it: 3 committed shards, an empty catalog.
    assert len(lib.read_manifest().shards) == 3 and not lib.catalog_is_current()
    with lib.lock():
        by_id, by_path = _read_state(lib)
    assert sorted(by_id) == [f"{i:032x}" for i in range(3)]
    assert len(by_path) == 3 and lib.catalog_is_current()


@pytest.fixture
def lagging(synthetic_library: SyntheticLibrary) -> tuple[SyntheticLibrary, np.ndarray, np.ndarray]:
    """An indexed library plus one committed shard (a new video) that the catalog lacks."""
    s = synthetic_library
    rng = np.random.default_rng(99)
    centre = rng.standard_normal(s.dim)
    vecs = centre / np.linalg.norm(centre) + 0.2 * rng.standard_normal((4, s.dim)) / np.sqrt(s.dim)
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    video = {**s.videos[0], "video_id": "f" * 32, "path": "/media/pets/new_video.mp4",
             "path_bytes": b"/media/pets/new_video.mp4", "num_clips": 4, "duration_s": 16.0}
    clips, videos, ids = make_shard_tables([video], [4], [vecs], s.lib.read_manifest().model.fingerprint, s.dim)
    with s.lib.lock():
        update_index(s.lib)
        s.lib.commit(clips, videos, "run-2", refresh_catalog=False)
    return s, ids, vecs


@pytest.mark.parametrize("indexed_new", [False, True])
def test_search_over_a_lagging_catalog_finds_new_clips_then_reloads(
        lagging: tuple[SyntheticLibrary, np.ndarray, np.ndarray], indexed_new: bool) -> None:
    s, new_ids, new_vecs = lagging
    lib = s.lib
    with lib.lock():  # a live writer: the searcher cannot (and must not wait to) refresh the catalog
        if indexed_new:
            update_index(lib)  # the index covers the new shard; only the catalog lags
        with Searcher(lib, record_history=False) as searcher:
            assert any("catalog.duckdb is behind" in w for w in searcher.warnings)
            for f in (Filters(), Filters(path_glob="/media/pets/*"), Filters(where="clips.start_s >= 0")):
                res = searcher.search(vector=new_vecs[0], k=4, filters=f, merge=False)
                # Committed clips are searchable while the catalog lags (D9): their rows are read
                # from the newer shard, with their own video's metadata.
                assert {h.clip_id for h in res.hits} == set(new_ids.tolist())
                assert all(h.path == "/media/pets/new_video.mp4" for h in res.hits)
                assert [h.start_s for h in sorted(res.hits, key=lambda h: h.clip_id)] == \
                    sorted(h.start_s for h in res.hits) or len({h.start_s for h in res.hits}) == 4
            assert searcher.vector_of(int(new_ids[0])) is not None  # the vector itself is there
            # The writer refreshes the catalog: no new generation, yet the searcher reloads.
            gen = lib.read_manifest().generation
            lib.refresh_catalog()
            assert lib.read_manifest().generation == gen
            res = searcher.search(vector=new_vecs[0], k=4, merge=False)
            assert {h.clip_id for h in res.hits} == set(new_ids.tolist())
            assert all(h.path == "/media/pets/new_video.mp4" for h in res.hits)
            assert not any("behind" in w for w in res.warnings)


def test_searcher_reads_the_shards_when_a_dead_writer_left_the_catalog_behind(
        lagging: tuple[SyntheticLibrary, np.ndarray, np.ndarray]) -> None:
    s, new_ids, new_vecs = lagging
    assert not s.lib.catalog_is_current()
    before = s.lib.catalog_path.read_bytes()
    # No writer alive: every committed clip is searchable (D9), the lagging catalog completed
    # from the newer shard in memory; the file itself is left for a writer to refresh.
    with Searcher(s.lib, record_history=False) as searcher:
        res = searcher.search(vector=new_vecs[1], k=4, merge=False)
        assert {h.clip_id for h in res.hits} == set(new_ids.tolist())
        assert all(h.path == "/media/pets/new_video.mp4" for h in res.hits)
        assert any("catalog.duckdb is behind the manifest" in w and "vidsearch doctor --fix" in w
                   for w in res.warnings)
    assert s.lib.catalog_path.read_bytes() == before and not s.lib.catalog_is_current()


def test_one_refresh_over_shards_that_redo_the_same_video(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Deferred shards are inserted in one transaction: a video settled again in a later shard
    (same clip ids) must still replace its earlier rows, as refreshing per commit did."""
    lib = Library(tmp_path / "lib")
    with lib.lock():
        lib.init(MODEL)
        lib.refresh_catalog()
        w = ShardWriter(lib, MODEL, "r", shard_rows=1, commit_interval_s=1e9, catalog_refresh_s=1e9)
        w.add(pending(0))
        w.add(pending(1))
        redo = pending(0)
        redo.row["run_id"] = "r2"
        w.add(redo)
        w.finish()
    assert w.refreshes == 1
    with lib.connect_catalog() as con:
        assert con.execute("SELECT count(*), count(DISTINCT clip_id) FROM clips").fetchone() == (6, 6)
        assert con.execute("SELECT shard_id, run_id FROM videos WHERE video_id = ?", [f"{0:032x}"]).fetchall() == \
            [(3, "r2")]
        assert con.execute("SELECT DISTINCT shard_id FROM clips WHERE video_id = ?", [f"{0:032x}"]).fetchall() == [(3,)]
        # row_in_shard points back at the clip's row in its shard file.
        rows = con.execute("SELECT clip_id, shard_id, row_in_shard FROM clips").fetchall()
    m = lib.read_manifest()
    for cid, sid, row in rows:
        t = lib.read_shard(next(s for s in m.shards if s.shard_id == sid), "clips", columns=["clip_id"])
        assert t.column("clip_id")[row].as_py() == cid


def test_refresh_takes_rows_of_shards_this_process_committed_from_memory(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A refresh after deferred commits inserts the committed tables kept in memory instead of
    reading back (for a remote store: downloading) the files it just wrote, and builds the same
    catalog as a rebuild from the files. A shard whose entry changed since is read from its file."""
    lib = Library(tmp_path / "lib")
    with lib.lock():
        lib.init(MODEL)
        w = ShardWriter(lib, MODEL, "r", shard_rows=1, commit_interval_s=1e9,
                        catalog_refresh_s=0.0, refresh_overhead=0.0)
        for i in range(0, 6, 2):
            clips, videos = w._tables([pending(i), pending(i + 1, clips=2)])
            lib.commit(clips, videos, "r", refresh_catalog=False)
        first = lib.read_manifest().shards[0]
        lib.catalog._fresh_rows[first.shard_id] = ("not-its-hash",) + lib.catalog._fresh_rows[first.shard_id][1:]
        reads: list[tuple[int, str]] = []
        real_read = Library.read_shard

        def counting_read(self, entry, kind, **kw):  # type: ignore[no-untyped-def]
            reads.append((entry.shard_id, kind))
            return real_read(self, entry, kind, **kw)

        monkeypatch.setattr(Library, "read_shard", counting_read)
        assert lib.refresh_catalog().shards_added == 3
        assert reads == [(first.shard_id, "clips"), (first.shard_id, "videos")]  # only the mismatched one
        assert not lib.catalog._fresh_rows  # taken in: nothing held after the refresh

        def dump() -> list:  # type: ignore[type-arg]
            with lib.connect_catalog() as con:
                return [con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
                        for t in ("clips", "videos", "failures")]

        from_memory = dump()
        lib.catalog_path.unlink()
        lib.refresh_catalog()  # rebuilt from the files alone
        assert dump() == from_memory and len(from_memory[0]) == 15 and len(from_memory[1]) == 6


def test_status_counts_every_committed_clip_of_a_lagging_catalog(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """status reads the reader's catalog (the file completed from newer shards, D9): its counts
    do not trail the manifest, and its note says so instead of waiting for an ingest."""
    from vidsearch.cli import main
    from vidsearch.commands.status import library_status

    lib = Library(tmp_path / "lib")
    with lib.lock():
        lib.init(MODEL)
        w = ShardWriter(lib, MODEL, "r", shard_rows=1, commit_interval_s=1e9,
                        catalog_refresh_s=0.0, refresh_overhead=0.0)
        w.add(pending(0))
        clips, videos = w._tables([pending(1), pending(2)])
        lib.commit(clips, videos, "r", refresh_catalog=False)
    assert catalog_videos(lib) == 1
    st = library_status(str(lib.root))
    assert not st["catalog_current"] and st["videos"]["done"] == 3 and st["clips"] == 9 == st["clips_in_shards"]
    assert main(["status", "--library", str(lib.root)]) == 0
    out = capsys.readouterr().out
    assert "catalog.duckdb behind the manifest (9 clips committed in shards): the counts above include the " \
           "newer shards" in " ".join(out.split())
    assert "refreshes it periodically" not in out
    assert catalog_videos(lib) == 1  # status wrote nothing
