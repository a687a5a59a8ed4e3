"""Filtered search equals exact brute-force filtered search, at 50%, 5% and 0.5% selectivity."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from conftest import SyntheticLibrary

from vidsearch.indexer import update_index
from vidsearch.schemas.config import IndexCfg, SearchCfg
from vidsearch.search import Filters, Searcher

K = 10


def brute_force(s: SyntheticLibrary, q: np.ndarray, allowed: np.ndarray, k: int) -> list[int]:
    mask = np.isin(s.clip_ids, allowed)
    ids, vecs = s.clip_ids[mask], s.vectors[mask]
    scores = vecs @ q
    order = np.lexsort((ids, -scores))[:k]
    return ids[order].tolist()


def allowed_ids(s: SyntheticLibrary, where: str) -> np.ndarray:
    with duckdb.connect(str(s.lib.catalog_path), read_only=True) as con:
        return con.execute(f"SELECT clips.clip_id FROM clips JOIN videos USING (video_id) WHERE {where}"
                           ).fetchnumpy()["clip_id"]


@pytest.fixture(params=["flat", "HNSW32", "IVF64,Flat"])
def indexed(request: pytest.FixtureRequest, synthetic_library: SyntheticLibrary) -> SyntheticLibrary:
    with synthetic_library.lib.lock():
        update_index(synthetic_library.lib, IndexCfg(factory=None if request.param == "flat" else request.param))
    return synthetic_library


@pytest.mark.parametrize("modulus,strategy", [(500, "overfetch"), (50, "selector"), (5, "exact-subset")])
def test_filtered_equals_exact(indexed: SyntheticLibrary, modulus: int, strategy: str) -> None:
    s = indexed
    where = f"clips.clip_id % 1000 < {modulus}"  # 50%, 5%, 0.5% of the clips
    allowed = allowed_ids(s, where)
    assert abs(len(allowed) / s.n - modulus / 1000) < 0.02 + modulus / 4000
    # exact_subset_max small enough that the 5% case exercises the FAISS ID selector path.
    cfg = SearchCfg(exact_subset_max=50)
    rng = np.random.default_rng(3)
    total = hits = 0
    with Searcher(s.lib, cfg=cfg, record_history=False) as searcher:
        for qi in rng.choice(s.n, 20, replace=False):
            q = s.vectors[qi] + 0.3 * rng.standard_normal(s.dim).astype(np.float32) / np.sqrt(s.dim)
            q /= np.linalg.norm(q)
            res = searcher.search(vector=q, k=K, filters=Filters(where=where), merge=False)
            assert res.strategy == strategy
            got = [h.clip_id for h in res.hits]
            want = brute_force(s, q, allowed, K)
            assert set(got) <= set(allowed.tolist())
            if searcher.index.meta.kind == "flat" or strategy == "exact-subset":
                assert got == want  # exact paths: identical ranking
            total += len(want)
            hits += len(set(got) & set(want))
    assert hits / total >= 0.95  # approximate paths: as good as exact within the recall target


def test_path_glob_duration_and_time_filters(synthetic_library: SyntheticLibrary) -> None:
    s = synthetic_library
    with s.lib.lock():
        update_index(s.lib)
    f = Filters(path_glob="/media/pets/*", min_duration_s=20, max_duration_s=100, from_s=10, to_s=30)
    allowed = allowed_ids(s, "videos.path GLOB '/media/pets/*' AND duration_s BETWEEN 20 AND 100 "
                             "AND clips.end_s > 10 AND clips.start_s < 30")
    assert 0 < len(allowed) < s.n
    with Searcher(s.lib, record_history=False) as searcher:
        for qi in (0, 100, 2000):
            res = searcher.search(vector=s.vectors[qi], k=5, filters=f, merge=False)
            assert [h.clip_id for h in res.hits] == brute_force(s, s.vectors[qi], allowed, 5)
            assert res.matched == len(allowed)


def test_hidden_statuses_never_returned(synthetic_library_factory) -> None:  # type: ignore[no-untyped-def]
    paths = [f"/v/{i}.mp4" for i in range(40)]
    statuses = ["replaced" if i % 2 else "done" for i in range(40)]
    s = synthetic_library_factory(0, paths=paths, statuses=statuses)
    replaced = {i for i, st in enumerate(statuses) if st == "replaced"}
    hidden = set(s.clip_ids[np.isin(s.video_of, list(replaced))].tolist())
    with s.lib.lock():
        update_index(s.lib)
    with Searcher(s.lib, record_history=False) as searcher:
        for qi in np.nonzero(np.isin(s.video_of, list(replaced)))[0][:10]:
            res = searcher.search(vector=s.vectors[qi], k=10, merge=False)
            assert len(res.hits) == 10  # widened until enough visible clips survive
            assert not {h.clip_id for h in res.hits} & hidden


def test_like_clip_excludes_itself_and_per_video(synthetic_library: SyntheticLibrary) -> None:
    s = synthetic_library
    with s.lib.lock():
        update_index(s.lib)
    with Searcher(s.lib, record_history=False) as searcher:
        cid = int(s.clip_ids[42])
        res = searcher.search(like_clip_id=cid, k=5, per_video=1)
        assert cid not in {c for h in res.hits for c in h.clip_ids}
        assert len({h.video_id for h in res.hits}) == len(res.hits) == 5
        # Its own video comes first: clustered embeddings.
        assert res.hits[0].video_id == s.videos[s.video_of[42]]["video_id"]
