"""The FAISS index: choice, ids = clip_id, self-retrieval, recall, incremental add, report."""

from __future__ import annotations

import json

import duckdb
import faiss
import numpy as np
import pytest
from conftest import SyntheticLibrary, make_shard_tables

from vidsearch.indexer import choose_index, load_index, read_meta, update_index
from vidsearch.library import LibraryError
from vidsearch.schemas.config import IndexCfg


def exact_topk(s: SyntheticLibrary, q: np.ndarray, k: int) -> np.ndarray:
    _, pos = faiss.knn(q, s.vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    return s.clip_ids[pos]


def test_choice_follows_size_and_budget() -> None:
    assert choose_index(1000, 512).kind == "flat"
    assert choose_index(200_000, 512).kind == "hnsw"
    assert choose_index(1_000_000, 512).kind == "ivf_flat"
    plan = choose_index(10_000_000, 512)
    assert plan.kind == "ivf_pq" and plan.factory.startswith("IVF")
    # The PQ code fits the budget: bytes per vector <= budget / n.
    m = int(plan.factory.split("PQ")[1])
    assert 10_000_000 * (m + 16) <= IndexCfg().memory_budget_bytes and 512 % m == 0
    assert choose_index(5, 8, IndexCfg(factory="HNSW16")).factory == "HNSW16"


def test_flat_self_retrieval_and_ids_map_to_clip_rows(synthetic_library: SyntheticLibrary) -> None:
    s = synthetic_library
    with s.lib.lock():
        report = update_index(s.lib)
    assert report.kind == "flat" and report.vectors == s.n and report.recall_at_1 == 1.0
    idx = load_index(s.lib)
    _, ids = idx.search(s.vectors, 1)
    assert (ids[:, 0] == s.clip_ids).all()  # every clip's own embedding finds that clip first
    # Every FAISS id maps to exactly one catalog row (and back).
    with s.lib.connect_catalog() as con:
        cat = np.sort(con.execute("SELECT clip_id FROM clips").fetchnumpy()["clip_id"])
    assert np.array_equal(np.sort(idx.vectors.all_ids()), cat)
    assert idx.ntotal == len(cat) == s.n


@pytest.mark.parametrize("factory", ["HNSW32", "IVF64,Flat"])
def test_approximate_index_recall(synthetic_library: SyntheticLibrary, factory: str) -> None:
    s = synthetic_library
    with s.lib.lock():
        report = update_index(s.lib, IndexCfg(factory=factory))
    assert report.recall_at_10 is not None and report.recall_at_10 >= 0.95
    idx = load_index(s.lib)
    rng = np.random.default_rng(1)
    qpos = rng.choice(s.n, 300, replace=False)
    q = s.vectors[qpos]
    _, got = idx.search(q, 10)
    truth = exact_topk(s, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), truth.tolist(), strict=True)])
    assert recall >= 0.95
    assert np.mean(got[:, 0] == s.clip_ids[qpos]) >= 0.95  # self-retrieval


def test_report_saved_beside_index(synthetic_library: SyntheticLibrary) -> None:
    s = synthetic_library
    with s.lib.lock():
        update_index(s.lib)
    meta = json.loads((s.lib.index_dir / "index.json").read_text())
    for key in ("model_fingerprint", "dim", "metric", "factory", "n", "shards", "index_sha256",
                "faiss_version", "trained_n", "added_since_training"):
        assert key in meta
    assert meta["metric"] == "inner_product" and meta["n"] == s.n
    rep = meta["report"]
    assert rep["latency_p50_ms"] > 0 and rep["latency_p99_ms"] >= rep["latency_p50_ms"]
    assert {sh["shard_id"] for sh in meta["shards"]} == {e.shard_id for e in s.lib.read_manifest().shards}


def test_incremental_add_without_retraining(synthetic_library: SyntheticLibrary) -> None:
    s = synthetic_library
    with s.lib.lock():
        first = update_index(s.lib, IndexCfg(factory="IVF32,Flat"))
        trained = read_meta(s.lib).trained_n
        rng = np.random.default_rng(5)
        videos = [dict(s.videos[0], video_id="f" * 32, path="/media/new/extra.mp4")]
        v = rng.standard_normal((20, s.dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        clips, vids, new_ids = make_shard_tables(videos, [20], [v], s.lib.read_manifest().model.fingerprint, s.dim)
        videos[0]["num_clips"] = 20
        s.lib.commit(clips, vids, run_id="run-2")
        second = update_index(s.lib, IndexCfg(factory="IVF32,Flat"))
        assert second.action == "extended" and second.added == 20 and second.vectors == s.n + 20
        meta = read_meta(s.lib)
        assert meta.trained_n == trained and meta.added_since_training == 20
        assert not second.rebuild_suggested
        # Past the ratio, a rebuild is suggested (and only done when asked).
        third = update_index(s.lib, IndexCfg(factory="IVF32,Flat", rebuild_ratio=0.001))
        assert third.action == "unchanged" and third.rebuild_suggested
        assert update_index(s.lib, IndexCfg(factory="IVF32,Flat"), rebuild=True).action == "rebuilt"
        assert read_meta(s.lib).added_since_training == 0
    assert first.action == "built"
    idx = load_index(s.lib)
    idx.meta.search_params["nprobe"] = 32
    _, got = idx.search(v, 1)
    assert (got[:, 0] == new_ids).all()


@pytest.mark.parametrize("indexed_before", [False, True])
def test_duplicate_clip_ids_across_shards_are_indexed_once(synthetic_library: SyntheticLibrary,
                                                           indexed_before: bool) -> None:
    """A redone video (its clip ids again in a later shard) is indexed once, whether the index is
    built after it (dedupe across shards) or extended with it (dedupe against the index)."""
    s = synthetic_library
    m = s.lib.read_manifest()
    t = s.lib.read_shard(m.shards[0], "clips")
    vids = s.lib.read_shard(m.shards[0], "videos")
    cfg = IndexCfg(factory="IVF32,Flat")
    with s.lib.lock():
        if indexed_before:
            update_index(s.lib, cfg)
        s.lib.commit(t.slice(0, 5), vids.slice(0, 1), run_id="run-redo")  # a redone video, same ids
        report = update_index(s.lib, cfg)
    assert report.action == ("extended" if indexed_before else "built") and report.vectors == s.n
    assert report.added == (0 if indexed_before else s.n)
    idx = load_index(s.lib)
    assert len(np.unique(idx.vectors.all_ids())) == idx.ntotal == s.n


def test_update_index_needs_writer_lock(synthetic_library: SyntheticLibrary) -> None:
    with pytest.raises(LibraryError, match="lock"):
        update_index(synthetic_library.lib)


def test_index_cli_builds_and_reports(synthetic_library: SyntheticLibrary, capsys: pytest.CaptureFixture) -> None:
    from vidsearch.cli import main

    assert main(["index", "--library", str(synthetic_library.lib.root), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["vectors"] == synthetic_library.n and rep["recall_at_10"] == 1.0
    with duckdb.connect(str(synthetic_library.lib.catalog_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM clips").fetchone()[0] == synthetic_library.n
