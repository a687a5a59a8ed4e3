"""RELIABILITY.md F9-F11, F13 for the index: corrupt, stale, extended and swapped indexes."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from vidsearch.indexer import IndexCorrupt, IndexStale, load_index, read_meta, update_index
from vidsearch.indexer.doctor import diagnose
from vidsearch.search import Searcher

pytestmark = pytest.mark.reliability

_spec = importlib.util.spec_from_file_location("_synth", Path(__file__).parents[1] / "unit" / "conftest.py")
synth = importlib.util.module_from_spec(_spec)
sys.modules["_synth"] = synth
_spec.loader.exec_module(synth)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    s = synth.build_synthetic_library(tmp_path_factory.mktemp("faults") / "lib", 1500, seed=4)
    with s.lib.lock():
        update_index(s.lib)
    return s


@pytest.fixture
def s(built, tmp_path: Path):  # type: ignore[no-untyped-def]
    return synth.copy_synthetic(built, tmp_path / "lib")


def top(searcher: Searcher, s, i: int) -> list[int]:  # type: ignore[no-untyped-def]
    return [h.clip_id for h in searcher.search(vector=s.vectors[i], k=5, merge=False).hits]


def index_file(s) -> Path:  # type: ignore[no-untyped-def]
    return s.lib.index_dir / read_meta(s.lib).index_file


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_f9_corrupt_index_detected_before_faiss_and_rebuilt(s, damage: str) -> None:  # type: ignore[no-untyped-def]
    p = index_file(s)
    data = bytearray(p.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x10  # FAISS itself would load this silently
    p.write_bytes(bytes(data))
    with pytest.raises(IndexCorrupt, match="SHA-256"):
        load_index(s.lib)
    assert any("SHA-256" in pr.message and "--rebuild" in pr.fix for pr in diagnose(s.lib))
    # A searcher with no writer around rebuilds it from the shards and answers exactly.
    with Searcher(s.lib, record_history=False) as searcher:
        assert searcher.index is not None and top(searcher, s, 7)[0] == s.clip_ids[7]
    load_index(s.lib)
    assert diagnose(s.lib) == []


def test_f9_corrupt_index_while_writer_holds_lock_falls_back_to_exact(s) -> None:  # type: ignore[no-untyped-def]
    with Searcher(s.lib, record_history=False) as good:
        expected = top(good, s, 11)
    p = index_file(s)
    p.write_bytes(p.read_bytes()[:100])
    with s.lib.lock():  # a writer (ingest) holds the library: no rebuild, exact search instead
        with Searcher(s.lib, record_history=False) as searcher:
            assert searcher.index is None
            assert any("vidsearch index --rebuild" in w for w in searcher.warnings)
            assert top(searcher, s, 11) == expected
        report = update_index(s.lib)  # the writer's own update repairs it
    assert report.action == "rebuilt" and report.vectors == s.n


def test_corrupt_vector_cache_detected(s) -> None:  # type: ignore[no-untyped-def]
    meta = read_meta(s.lib)
    p = s.lib.index_dir / meta.shards[0].vectors_file
    data = bytearray(p.read_bytes())
    data[-5] ^= 0xFF
    p.write_bytes(bytes(data))
    idx = load_index(s.lib)
    with pytest.raises(IndexCorrupt, match="SHA-256"):
        idx.vectors.vectors(meta.shards[0].shard_id)
    assert diagnose(s.lib)


@pytest.mark.parametrize("when", ["at check", "at query"])
@pytest.mark.parametrize("writer", [False, True])
def test_corrupt_vector_cache_found_by_a_searcher_is_repaired_or_searched_exactly(s, when: str, writer: bool) -> None:  # type: ignore[no-untyped-def]
    """A vector-cache file altered after the index was loaded: found when the server checks the
    cache at start, or when a filtered query first reads it. Without a writer the index is
    rebuilt; with one, the searcher answers exactly from the shards; either way, right."""
    from vidsearch.search import Filters

    meta = read_meta(s.lib)
    f = Filters(where="clips.clip_index % 7 = 0")  # a small subset: exact scoring from the cache
    with Searcher(s.lib, record_history=False) as good:
        expected = [h.clip_id for h in good.search(vector=s.vectors[3], k=5, filters=f, merge=False).hits]
    with contextlib.ExitStack() as stack:
        if writer:
            stack.enter_context(s.lib.lock())
        searcher = stack.enter_context(Searcher(s.lib, record_history=False))
        assert searcher.index is not None
        p = s.lib.index_dir / meta.shards[0].vectors_file
        data = bytearray(p.read_bytes())
        data[-5] ^= 0xFF
        p.write_bytes(bytes(data))
        if when == "at check":
            searcher.check_vector_cache()
        res = searcher.search(vector=s.vectors[3], k=5, filters=f, merge=False)
        assert [h.clip_id for h in res.hits] == expected
        if writer:
            assert searcher.index is None and any("SHA-256" in w and "--rebuild" in w for w in res.warnings)
        else:
            assert searcher.index is not None and res.strategy == "exact-subset"
    if not writer:
        assert diagnose(s.lib) == []  # rebuilt: the cache checks again


def test_shard_added_after_indexing_is_searched_not_dropped(s) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(9)
    v = rng.standard_normal((6, s.dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    video = dict(s.videos[0], video_id="e" * 32, path="/media/late/new.mp4", num_clips=6)
    clips, vids, new_ids = synth.make_shard_tables([video], [6], [v], synth.SYNTH_FINGERPRINT, s.dim)
    with s.lib.lock():
        s.lib.commit(clips, vids, run_id="run-2")  # ingest stopped before updating the index
    assert any("not in the index" in pr.message for pr in diagnose(s.lib))
    with Searcher(s.lib, record_history=False) as searcher:
        res = searcher.search(vector=v[2], k=3, merge=False)
        assert res.hits[0].clip_id == new_ids[2] and res.strategy.endswith("+exact-new")
        assert searcher.warnings
    with s.lib.lock():
        assert update_index(s.lib).action == "extended"
    with Searcher(s.lib, record_history=False) as searcher:
        res = searcher.search(vector=v[2], k=3, merge=False)
        assert res.hits[0].clip_id == new_ids[2] and res.strategy == "ann"


def test_index_built_for_another_model_is_stale(s, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other = synth.build_synthetic_library(tmp_path / "other", 300, seed=5, fingerprint="other-model-fp")
    with other.lib.lock():
        update_index(other.lib)
    # Put the other library's index (another embedding space) into this library.
    import shutil

    shutil.rmtree(s.lib.index_dir)
    shutil.copytree(other.lib.index_dir, s.lib.index_dir)
    with pytest.raises(IndexStale, match="other-model-fp"):
        load_index(s.lib)
    assert any("index:" in pr.message for pr in diagnose(s.lib))
    with s.lib.lock():
        report = update_index(s.lib)
    assert report.action == "rebuilt" and report.vectors == s.n
    assert read_meta(s.lib).model_fingerprint == synth.SYNTH_FINGERPRINT


def test_f11_index_covers_shard_the_manifest_lacks(s) -> None:  # type: ignore[no-untyped-def]
    import json
    from dataclasses import replace

    m = s.lib.read_manifest()
    dropped = m.shards[-1]
    m2 = replace(m, shards=m.shards[:-1], generation=m.generation + 1)
    s.lib.manifest_path.write_text(m2.to_json())
    with pytest.raises(IndexStale, match=f"shard {dropped.shard_id}"):
        load_index(s.lib)
    assert json.loads((s.lib.index_dir / "index.json").read_text())["n"] == s.n


def test_f13_swap_while_searcher_holds_old_index(s) -> None:  # type: ignore[no-untyped-def]
    with Searcher(s.lib, record_history=False) as searcher:
        before = top(searcher, s, 3)
        old_file = index_file(s)
        with s.lib.lock():
            update_index(s.lib, rebuild=True)  # new file, old one deleted
        assert not old_file.exists()
        assert top(searcher, s, 3) == before  # the loaded copy keeps working
