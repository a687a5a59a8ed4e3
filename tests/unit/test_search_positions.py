"""Filter masks over clip positions: run-wise exact scoring, --where with/without the join, the
filter cache and its invalidation, clips of shards the index does not cover yet."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from conftest import SyntheticLibrary, make_shard_tables

from vidsearch.indexer import load_index, update_index
from vidsearch.search import Filters, Searcher


def reference_ids(s: SyntheticLibrary, where: str) -> np.ndarray:
    with duckdb.connect(str(s.lib.catalog_path), read_only=True) as con:
        return np.sort(con.execute("SELECT clips.clip_id FROM clips JOIN videos USING (video_id) "
                                   f"WHERE videos.status IN ('done', 'partial') AND ({where})"
                                   ).fetchnumpy()["clip_id"])


@pytest.mark.parametrize("threaded", [False, True])
def test_score_rows_equals_gathered_matvec(synthetic_library: SyntheticLibrary, threaded: bool,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Exact subset scores equal a gather + matvec, serial and split over threads (pieces that
    cut runs and shards at arbitrary rows)."""
    import vidsearch.indexer.store as store_mod

    if threaded:
        monkeypatch.setattr(store_mod, "_PARALLEL_ROWS", 4)
        monkeypatch.setattr(store_mod, "_PIECE_ROWS", 7)
        monkeypatch.setattr(store_mod.os, "cpu_count", lambda: 3)
    s = synthetic_library
    with s.lib.lock():
        update_index(s.lib)
    store = load_index(s.lib).vectors
    ids, _ = store.store_order()
    q = s.vectors[7]
    rng = np.random.default_rng(0)
    # Long runs (whole videos, crossing shard boundaries), scattered rows, single rows, none.
    runs = np.concatenate([np.arange(a, min(a + 40, len(ids))) for a in range(0, len(ids), 97)])
    for rows in (runs, np.sort(rng.choice(len(ids), 200, replace=False)), np.array([len(ids) - 1]),
                 np.arange(len(ids)), np.empty(0, np.int64)):
        _, want = store.gather(ids[rows])
        np.testing.assert_allclose(store.score_rows(rows, q), want @ q, rtol=1e-5, atol=1e-6)
    # FAISS reads unchecked memory: a wrong-sized query or a row past the end is refused first.
    with pytest.raises(ValueError, match="shape"):
        store.score_rows(np.arange(3), q[:-1])
    with pytest.raises(IndexError, match="out of range"):
        store.score_rows(np.array([0, len(ids)]), q)
    with pytest.raises(ValueError, match="ascending"):
        store.score_rows(np.array([5, 2 * len(ids), 7]), q)


WHERES = (
    "clips.clip_index % 3 = 0",                         # clips alone: no join
    "clip_index < 4 AND start_s >= 4",                  # unqualified clips columns
    "videos.codec = 'h264' AND clips.clip_index < 5",   # needs the videos columns
    "codec IN ('hevc', 'av1') OR clips.clip_id % 7 = 0",
)


def test_where_matches_the_join_and_bad_ones_are_refused(synthetic_library: SyntheticLibrary) -> None:
    s = synthetic_library
    with s.lib.lock():
        update_index(s.lib)
    with Searcher(s.lib, record_history=False) as searcher:
        for where in WHERES:
            for _ in range(2):  # second time from the cache
                assert np.array_equal(searcher.matching_ids(Filters(where=where)), reference_ids(s, where))
            f = Filters(where=where, path_glob="/media/pets/*", from_s=8)
            assert np.array_equal(searcher.matching_ids(f), reference_ids(
                s, f"({where}) AND videos.path GLOB '/media/pets/*' AND clips.end_s > 8"))
        for where in ("path GLOB '/media/pets/*'",  # in clips and videos: ambiguous under the join
                      "no_such_column > 1", "clips.clip_id > 'x' ||"):
            with pytest.raises(ValueError):  # SearchError, or QueryRefused before it runs
                searcher.search(vector=s.vectors[0], k=5, filters=Filters(where=where))


def test_cache_dropped_on_commit_and_new_shard_clips_match(synthetic_library: SyntheticLibrary) -> None:
    s = synthetic_library
    with s.lib.lock():
        update_index(s.lib)
    f = Filters(path_glob="/media/new/*")
    with Searcher(s.lib, record_history=False) as searcher:
        assert searcher.search(vector=s.vectors[0], k=5, filters=f).matched == 0
        rng = np.random.default_rng(5)
        videos = [dict(s.videos[0], video_id="f" * 32, path="/media/new/extra.mp4", num_clips=20)]
        v = rng.standard_normal((20, s.dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        clips, vids, new_ids = make_shard_tables(videos, [20], [v], s.lib.read_manifest().model.fingerprint, s.dim)
        with s.lib.lock():
            s.lib.commit(clips, vids, run_id="run-2")  # not indexed: searched exactly
        res = searcher.search(vector=v[3], k=5, filters=f, merge=False)
        assert res.matched == 20 and res.hits[0].clip_id == new_ids[3]
        assert {h.clip_id for h in res.hits} <= set(new_ids.tolist())
        # Query by example inside the filter: the clip itself is left out of the matches.
        res = searcher.search(like_clip_id=int(new_ids[3]), k=5, filters=f, merge=False)
        assert res.matched == 19 and int(new_ids[3]) not in {h.clip_id for h in res.hits}
        assert searcher.search(vector=v[3], k=5, filters=f).matched == 20  # cached mask untouched
